"""Issue #12, training side: nothing lost, nothing silently wrong, one line instead of a traceback."""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from exgra.errors import ConfigError, DataError, ExgraError
from exgra.training import run_training
from exgra.training.checkpoint import CHECKPOINTS, list_checkpoints
from tests.training.helpers import data_overrides, tiny_config

CONFIGS = Path(__file__).resolve().parents[2] / "exgra" / "configs"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _users_folder(root: Path) -> Path:
    mine = root / "mine"
    (mine / "logs").mkdir(parents=True)
    (mine / "config.yaml").write_text("m\n")
    (mine / "logs" / "notes.txt").write_text("n\n")
    (mine / "thesis.tex").write_text("t\n")
    return mine


@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_overwrite_or_resume_on_a_users_folder_refuses_and_deletes_nothing(
    flag, tmp_path, pretrain_data, run_exgra
):
    mine = _users_folder(tmp_path)
    before = _snapshot(mine)
    args = ["train", "stage1", "--config", CONFIGS / "tiny_stage1.yaml", "train.max_steps=2"]
    result = run_exgra(*args, *data_overrides(pretrain_data), "-o", mine, flag)
    assert result.exit_code == 1
    assert "exgra never replaces files it did not write" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert _snapshot(mine) == before  # byte-identical, nothing added


def test_stage2_refuses_a_batch_of_one_and_notes_a_clamped_k():
    from exgra.training.loop import _check_alignment_batch

    data = {"train_json": "x.json", "image_folder": "images"}
    for extra in ([], ["train.grad_accum=4"]):
        with pytest.raises(ConfigError, match="a graph over one node cannot be matched"):
            tiny_config("stage2", data, "train.per_device_batch_size=1", *extra)
    # graph scope global: the graphs span all processes, so the global batch is what counts
    config = tiny_config("stage2", data, "train.per_device_batch_size=1", "alignment.graph_scope=global")
    notes: list[str] = []
    with pytest.raises(ConfigError, match="1 node here"):
        _check_alignment_batch(config, 1, notes.append)
    _check_alignment_batch(config, 4, notes.append)  # 4 nodes: k=5 is clamped to 3
    assert notes == [
        "note: alignment.k=5 is clamped to 3: a graph over a batch of 4 nodes has at most 3 neighbours "
        "per node"
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_grad_norm=-1", "train.max_grad_norm': Input should be greater than 0"),
        ("train.max_grad_norm=0", "train.max_grad_norm': Input should be greater than 0"),
        ("train.lr=inf", "train.lr': Input should be a finite number"),
        ("train.lr=nan", "train.lr': Input should be a finite number"),
        ("train.lr=-1e-3", "train.lr': Input should be greater than 0"),
        ("train.lr=fast", "train.lr': Input should be a valid number"),
        ("train.adam_betas=[0.9,1.0]", "train.adam_betas.1': Input should be less than 1"),
        ("train.adam_betas=[-0.1,0.9]", "train.adam_betas.0': Input should be greater than or equal to 0"),
        ("train.adam_betas=abc", "train.adam_betas': Input should be a valid tuple"),
        ("train.adam_eps=0", "train.adam_eps': Input should be greater than 0"),
        ("train.adam_eps=small", "train.adam_eps': Input should be a valid number"),
    ],
)
def test_optimiser_settings_are_validated_in_the_config(override, message):
    with pytest.raises(ConfigError, match=message) as caught:
        tiny_config("stage1", {}, override)
    assert "\n" not in str(caught.value)


def test_max_grad_norm_null_still_turns_clipping_off():
    assert tiny_config("stage1", {}, "train.max_grad_norm=null").train.max_grad_norm is None


def _poison_second_step(monkeypatch):
    """The second forward returns a NaN loss (as lr=inf or an fp16 overflow would)."""
    from exgra.training.steps import TrainingModule

    original = TrainingModule.forward
    calls = {"n": 0}

    def forward(self, batch):
        losses = original(self, batch)
        calls["n"] += 1
        if calls["n"] == 2:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(TrainingModule, "forward", forward)


def test_a_non_finite_loss_stops_the_run_saving_nothing_broken(tmp_path, pretrain_data, monkeypatch):
    _poison_second_step(monkeypatch)
    config = tiny_config(
        "stage1", pretrain_data, "train.max_steps=4", "train.save_every=1", "train.grad_accum=1"
    )
    with pytest.raises(ExgraError, match=r"step 2: the loss or gradient is not finite .*on_nonfinite=skip"):
        run_training(config, output_dir=tmp_path / "run", show_progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-000001"]
    assert not (tmp_path / "run" / "final").exists()
    weights = load_file(str(tmp_path / "run" / CHECKPOINTS / "step-000001" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_on_nonfinite_skip_skips_the_step_and_keeps_training(tmp_path, pretrain_data, monkeypatch):
    _poison_second_step(monkeypatch)
    config = tiny_config(
        "stage1", pretrain_data, "train.max_steps=3", "train.on_nonfinite=skip", "train.grad_accum=1"
    )
    result = run_training(config, output_dir=tmp_path / "run", show_progress=False)
    weights = load_file(str(result.final_dir / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped_steps", 0) for r in rows] == [0, 1, 1]
    assert all(r["loss"] is not None and math.isfinite(r["loss"]) for r in rows)


def test_every_image_path_is_checked_before_the_first_step(tmp_path, pretrain_data):
    records = json.loads(Path(pretrain_data["train_json"]).read_text())
    records[-1]["image"] = "missing.png"
    records[-2]["image"] = "../escape.png"
    (tmp_path / "train.json").write_text(json.dumps(records))
    data = {**pretrain_data, "train_json": str(tmp_path / "train.json")}
    # one step reads only the first batch: the bad records come up only if checked beforehand
    config = tiny_config("stage1", data, "train.max_steps=1")
    with pytest.raises(
        DataError,
        match=r"max_bad_records=0 bad records; first: 'r30' \(image path '\.\./escape\.png' resolves outside",
    ):
        run_training(config, output_dir=tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()  # a failed run leaves no (empty) output folder
    tolerant = tiny_config("stage1", data, "train.max_steps=1", "data.max_bad_records=2")
    result = run_training(tolerant, output_dir=tmp_path / "ok", show_progress=False)
    assert sorted(bad["id"] for bad in result.bad_records) == ["r30", "r31"]
    assert "outside the image folder" in {b["id"]: b["reason"] for b in result.bad_records}["r30"]


def _full_disk_in_exgras_writer(monkeypatch):
    """Our own atomic writer (trainer_state.json, config.yaml) hits ENOSPC in the step-2 checkpoint."""
    import tempfile

    original = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and ".tmp-step-000002" in str(dir):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def _full_disk_in_accelerate(monkeypatch):
    """accelerate's weight/optimizer writer runs out of space half-way through the step-2 checkpoint."""
    from accelerate import Accelerator

    original = Accelerator.save_state

    def save_state(self, output_dir=None, **kwargs):
        if output_dir is not None and output_dir.endswith(".tmp-step-000002"):
            (Path(output_dir) / "model.safetensors").write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)


@pytest.mark.parametrize("writer", [_full_disk_in_exgras_writer, _full_disk_in_accelerate])
def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_cleans_up(
    writer, tmp_path, pretrain_data, monkeypatch
):
    writer(monkeypatch)
    config = tiny_config("stage1", pretrain_data, "train.max_steps=3", "train.save_every=1")
    with pytest.raises(ExgraError) as caught:
        run_training(config, output_dir=tmp_path / "run", show_progress=False)
    message = str(caught.value)
    assert "cannot save the checkpoint of step 2" in message and "the disk is full" in message
    assert "step-000001" in message and "\n" not in message
    root = tmp_path / "run" / CHECKPOINTS
    assert sorted(p.name for p in root.iterdir()) == ["step-000001"]  # no .tmp-step-* left behind


def test_resume_after_a_kill_logs_every_step_once(tmp_path, pretrain_data):
    config = tiny_config(
        "stage1", pretrain_data, "train.max_steps=5", "train.save_every=2", "train.grad_accum=1"
    )

    class Killed(BaseException):
        """Stands in for kill -9: the process ends between two steps, nothing runs after it."""

    def kill_after_step_3(info):
        if info.step == 3:
            raise Killed

    with pytest.raises(Killed):
        run_training(config, output_dir=tmp_path / "run", callbacks=[kill_after_step_3], show_progress=False)
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3]
    run_training(config, output_dir=tmp_path / "run", resume=True, show_progress=False)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_tiny_finetune_recipe_names_what_prepare_demo_writes(tmp_path, monkeypatch, run_exgra):
    built = run_exgra("prepare", "demo", "--output", tmp_path / "demo", "--num-samples", "40")
    assert built.exit_code == 0, built.stderr
    monkeypatch.chdir(tmp_path)
    config = tiny_config("finetune", {})
    for path in (config.data.train_json, config.data.val_json):
        assert Path(path).is_file(), path
    assert Path(config.data.image_folder).is_dir()
    header = (CONFIGS / "tiny_finetune.yaml").read_text().splitlines()[0]
    assert "exgra prepare demo --output demo" in header and "--config tiny_finetune" in header


def test_fsdp_on_a_machine_without_gpus_names_the_cpu_config(tmp_path, pretrain_data, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    config = tiny_config("stage1", pretrain_data, "train.max_steps=1")
    with pytest.raises(
        ConfigError, match=r"FSDP shards the model over accelerators.*ddp_cpu\.yaml"
    ) as caught:
        run_training(config, output_dir=tmp_path / "run", show_progress=False)
    assert "precision" not in str(caught.value)
    assert not (tmp_path / "run").exists()
