"""The training loop on the tiny model: what each stage trains, resume, interruption, bad data, CLI."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from exgra.errors import DataError
from exgra.training import load_train_config, run_training
from exgra.training.stages import parameter_group
from tests.training.helpers import data_overrides, tiny_config

CONFIGS = Path(__file__).resolve().parents[2] / "exgra" / "configs"


def _config(stage: str, data: dict[str, str], *overrides: str):
    return tiny_config(stage, data, *overrides)


def _initial_weights(config) -> dict[str, torch.Tensor]:
    """The weights a run starts from: the same seed builds the same random tiny model."""
    from accelerate.utils import set_seed

    from exgra.models import build_model

    set_seed(config.train.seed)
    return {k: v.clone() for k, v in build_model(config.model).model.state_dict().items()}


def _check_trained_and_frozen(final_dir: Path, initial: dict[str, torch.Tensor], trained_groups: set[str]):
    final = load_file(str(final_dir / "model.safetensors"))
    changed, unchanged = set(), set()
    for name, before in initial.items():
        after = final[name]
        (unchanged if torch.equal(before, after) else changed).add(name)
    groups_changed = {parameter_group(n) for n in changed}
    assert groups_changed == trained_groups
    for name in unchanged | changed:
        if parameter_group(name) not in trained_groups:
            assert name in unchanged, f"frozen parameter {name} changed"
    trained = [n for n in initial if parameter_group(n) in trained_groups]
    # nearly every trained tensor moved (a few, e.g. unused embedding rows' norms, may not)
    assert len(changed) >= 0.8 * len(trained)


@pytest.mark.parametrize(
    ("stage", "trained"),
    [("stage1", {"projector"}), ("finetune", {"projector", "llm"})],
)
def test_stage_trains_the_right_parameters(stage, trained, tmp_path, pretrain_data, vqa_data):
    data = vqa_data if stage == "finetune" else pretrain_data
    config = _config(stage, data, "train.eval_every=null")
    result = run_training(config, output_dir=tmp_path / "run", show_progress=False)
    assert result.step == 20 and not result.interrupted
    _check_trained_and_frozen(result.final_dir, _initial_weights(config), trained)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 21))
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert {"loss", "lm_loss", "align_loss", "lr", "samples_per_second"} <= set(lines[0])
    summary = json.loads((result.final_dir / "training_metrics.json").read_text())
    assert summary["step"] == 20
    assert (result.final_dir / "train_config.yaml").is_file()
    # save_every=10, keep_last=2: the step-10 and the final step-20 checkpoints remain
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "step-000010",
        "step-000020",
    ]


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, pretrain_data):
    config = _config(
        "stage1", pretrain_data, "train.max_steps=12", "train.save_every=4", "train.grad_accum=2"
    )
    straight = run_training(config, output_dir=tmp_path / "a", show_progress=False)

    def stop_at_6(info):
        info.stop = info.step == 6

    stopped = run_training(config, output_dir=tmp_path / "b", callbacks=[stop_at_6], show_progress=False)
    assert stopped.interrupted and stopped.step == 6 and stopped.final_dir is None
    assert stopped.last_checkpoint.name == "step-000006"
    resumed = run_training(config, output_dir=tmp_path / "b", resume=True, show_progress=False)
    assert resumed.step == 12 and not resumed.interrupted
    a = load_file(str(straight.final_dir / "model.safetensors"))
    b = load_file(str(resumed.final_dir / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_ctrl_c_saves_a_checkpoint_and_stops(tmp_path, pretrain_data):
    config = _config("stage1", pretrain_data, "train.max_steps=10", "train.save_every=null")

    def press_ctrl_c(info):
        if info.step == 3:
            signal.raise_signal(signal.SIGINT)

    result = run_training(config, output_dir=tmp_path / "run", callbacks=[press_ctrl_c], show_progress=False)
    assert result.interrupted and result.step == 3
    assert (result.last_checkpoint / "model.safetensors").is_file()
    assert json.loads((result.last_checkpoint / "trainer_state.json").read_text())["step"] == 3


def test_unreadable_image_stops_the_run_with_its_record_id(tmp_path, pretrain_data):
    images = Path(pretrain_data["image_folder"])
    broken = tmp_path / "images"
    broken.mkdir()
    for image in images.iterdir():
        (broken / image.name).write_bytes(image.read_bytes())
    (broken / "img_003.png").write_bytes(b"not a png")
    data = {**pretrain_data, "image_folder": str(broken)}
    with pytest.raises(DataError, match=r"'r(3|11|19|27)' \(image 'img_003\.png' could not be loaded"):
        run_training(
            _config("stage1", data, "train.max_steps=8"), output_dir=tmp_path / "a", show_progress=False
        )
    # with a limit the bad records are skipped, counted and reported, never replaced
    result = run_training(
        _config("stage1", data, "train.max_steps=8", "data.max_bad_records=10"),
        output_dir=tmp_path / "b",
        show_progress=False,
    )
    ids = {bad["id"] for bad in result.bad_records}
    assert ids and ids <= {"r3", "r11", "r19", "r27"}
    summary = json.loads((result.final_dir / "training_metrics.json").read_text())
    assert {bad["id"] for bad in summary["bad_records"]} == ids


def test_data_fraction_is_a_seeded_subset():
    from exgra.data.datasets import select_fraction

    subset = select_fraction(100, 0.1, seed=3)
    assert len(subset) == 10 and subset == sorted(subset) and subset == select_fraction(100, 0.1, seed=3)
    assert subset != select_fraction(100, 0.1, seed=4)
    assert select_fraction(5, 1.0, seed=0) == [0, 1, 2, 3, 4]


def test_finetune_keeps_the_best_validation_model(tmp_path, vqa_data):
    config = _config("finetune", vqa_data, "train.max_steps=10", "train.eval_every=5")
    result = run_training(config, output_dir=tmp_path / "run", show_progress=False)
    assert result.best_dir is not None and (result.best_dir / "model.safetensors").is_file()
    best = json.loads((result.best_dir / "validation_metrics.json").read_text())
    assert best["step"] in (5, 10) and best["average"] == pytest.approx(result.best_metric)
    assert 0.0 <= best["average"] <= 100.0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in rows if "val_average" in r]
    assert [r["step"] for r in evaluated] == [5, 10]
    assert max(r["val_average"] for r in evaluated) == pytest.approx(result.best_metric)
    answers = (tmp_path / "run" / "validation" / "step-000005.jsonl").read_text().splitlines()
    assert len(answers) == 8


def test_cli_trains_refuses_a_used_dir_and_resumes(tmp_path, pretrain_data, run_exgra):
    out = tmp_path / "run"
    args = [
        "train",
        "stage1",
        "--config",
        CONFIGS / "tiny_stage1.yaml",
        "--output-dir",
        out,
        "train.max_steps=4",
        *data_overrides(pretrain_data),
    ]
    first = run_exgra(*args)
    assert first.exit_code == 0, first.stderr
    assert (out / "final" / "config.json").is_file()
    again = run_exgra(*args)
    assert again.exit_code == 1 and "--resume" in again.stderr and "not empty" in again.stderr
    resumed = run_exgra(*args, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    changed = run_exgra(*args[:-2], "train.lr=0.5", *args[-2:], "--resume")
    assert changed.exit_code == 1 and "train.lr" in changed.stderr
    wrong = run_exgra("finetune", "--config", CONFIGS / "tiny_stage1.yaml", "--output-dir", tmp_path / "x")
    assert wrong.exit_code == 1 and "exgra train stage1" in wrong.stderr


def test_stage2_trains_llm_projector_and_gnn_with_alignment(tmp_path, pretrain_data):
    from accelerate.utils import set_seed

    from exgra.alignment import AlignmentConfig, MultiGraphAlignment
    from exgra.models import build_model

    config = _config("stage2", pretrain_data)
    result = run_training(config, output_dir=tmp_path / "run", show_progress=False)
    assert result.step == 20
    set_seed(config.train.seed)
    bundle = build_model(config.model)
    initial = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    gnn = MultiGraphAlignment(AlignmentConfig(), bundle.model.config.text_config.hidden_size).state_dict()
    _check_trained_and_frozen(result.final_dir, initial, {"projector", "llm"})
    trained_gnn = load_file(str(result.final_dir / "alignment.safetensors"))
    assert set(trained_gnn) == set(gnn) and any(not torch.equal(gnn[k], trained_gnn[k]) for k in gnn)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["align_loss"] > 0 for r in rows)
    for row in rows:
        assert row["loss"] == pytest.approx(
            row["lm_loss"] + config.alignment.alpha * row["align_loss"], rel=1e-5
        )


def test_stage2_resume_matches_uninterrupted_run(tmp_path, pretrain_data):
    config = _config("stage2", pretrain_data, "train.max_steps=4", "train.save_every=2")
    straight = run_training(config, output_dir=tmp_path / "a", show_progress=False)

    def stop_at_2(info):
        info.stop = info.step == 2

    run_training(config, output_dir=tmp_path / "b", callbacks=[stop_at_2], show_progress=False)
    resumed = run_training(config, output_dir=tmp_path / "b", resume=True, show_progress=False)
    for name in ("model.safetensors", "alignment.safetensors"):
        a = load_file(str(straight.final_dir / name))
        b = load_file(str(resumed.final_dir / name))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("pooling", ["mean", "masked_mean"])
def test_packed_text_passes_compute_the_same_features(pooling):
    from exgra.models import create_model
    from exgra.training.steps import _packed_text_features, pooled_text_features

    torch.manual_seed(0)
    model = create_model("tiny").model.eval()
    pad = 0
    response = torch.tensor([[1, 5, 6, 7], [1, 8, 0, 0]])
    caption = torch.tensor([[1, 9, 10, 11, 12, 13], [1, 14, 15, 0, 0, 0]])
    masks = [(response != pad).long(), (caption != pad).long()]
    with torch.no_grad():
        separate = [
            pooled_text_features(model, ids, m, pooling, "llm_output")
            for ids, m in zip([response, caption], masks, strict=True)
        ]
        packed = _packed_text_features(
            model, list(zip([response, caption], masks, strict=True)), pooling, "llm_output", pad
        )
    for a, b in zip(separate, packed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_lora_finetune_trains_adapters_and_saves_a_merged_model(tmp_path, vqa_data):
    pytest.importorskip("peft")
    config = _config(
        "finetune", vqa_data, "train.max_steps=4", "train.eval_every=null", "train.lora.enabled=true"
    )
    result = run_training(config, output_dir=tmp_path / "run", show_progress=False)
    final = load_file(str(result.final_dir / "model.safetensors"))
    assert not any("lora_" in name for name in final)  # adapters merged into plain weights
    initial = _initial_weights(config)
    assert set(final) == set(initial)
    changed = {parameter_group(n) for n in initial if not torch.equal(initial[n], final[n])}
    assert changed == {"projector", "llm"}  # the merged adapters moved the LLM's linear layers
    assert torch.equal(initial["lm_head.weight"], final["lm_head.weight"])  # no adapter there


def test_export_from_a_gathered_state_dict_matches_the_direct_export(tmp_path):
    """The FSDP / DeepSpeed export path: full weights -> meta-built model -> HF-native directory."""
    from exgra.alignment import AlignmentConfig, MultiGraphAlignment
    from exgra.models import build_model, load_model
    from exgra.training.checkpoint import module_from_state_dict, save_model_dir
    from exgra.training.steps import TrainingModule

    config = load_train_config("stage2", CONFIGS / "tiny_stage2.yaml")
    bundle = build_model(config.model)
    module = TrainingModule(bundle.model, MultiGraphAlignment(AlignmentConfig(), 256))
    rebuilt = module_from_state_dict({k: v.clone() for k, v in module.state_dict().items()}, config)
    save_model_dir(rebuilt, bundle, tmp_path / "gathered")
    save_model_dir(module, bundle, tmp_path / "direct")
    a = load_file(str(tmp_path / "gathered" / "model.safetensors"))
    b = load_file(str(tmp_path / "direct" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    g = load_file(str(tmp_path / "gathered" / "alignment.safetensors"))
    assert all(torch.equal(g[k], module.alignment.state_dict()[k]) for k in g)
    reloaded = load_model(tmp_path / "gathered").model
    assert torch.equal(reloaded.lm_head.weight, bundle.model.lm_head.weight)
