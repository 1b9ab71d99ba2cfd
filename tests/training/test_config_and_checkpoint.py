"""Run configs, shipped recipes, stage presets, checkpoint bookkeeping and output-dir rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from exgra.config import read_yaml
from exgra.errors import ConfigError, ExgraError
from exgra.training.checkpoint import (
    TrainerState,
    finalize_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    save_trainer_state,
    temporary_dir,
)
from exgra.training.config import load_train_config
from exgra.training.loop import epoch_batches, prepare_output_dir
from exgra.training.stages import apply_stage, parameter_group, trainable_groups

CONFIGS = Path(__file__).resolve().parents[2] / "exgra" / "configs"
RECIPES = sorted(CONFIGS.glob("*.yaml"))


def test_recipes_are_shipped():
    names = {p.stem for p in RECIPES}
    for expected in (
        "stage1",
        "stage2",
        "finetune_vqa_rad",
        "finetune_slake_dci",
        "finetune_pathvqa",
        "stage2_10percent",
    ):
        assert expected in names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(recipe):
    first = recipe.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# exgra "), "a recipe starts with the command that runs it"
    stage = read_yaml(recipe)["train"]["stage"]
    command = "exgra finetune" if stage == "finetune" else f"exgra train {stage}"
    assert command in first and recipe.name in first
    config = load_train_config(stage, recipe)
    assert config.train.stage == stage
    assert config.alignment.enabled == (stage == "stage2")


@pytest.mark.parametrize("name", sorted((CONFIGS / "accelerate").glob("*.yaml")), ids=lambda p: p.stem)
def test_accelerate_configs_parse(name):
    data = read_yaml(name)
    assert data["distributed_type"] in {"NO", "MULTI_GPU", "MULTI_CPU", "FSDP", "DEEPSPEED"}
    if data["distributed_type"] == "FSDP":
        # fsdp.yaml wraps LLaMA's layer; fsdp_<family>.yaml its family's (tests/models/test_families.py).
        layer = data["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
        assert layer == "LlamaDecoderLayer" if name.stem == "fsdp" else layer.endswith("DecoderLayer")


def test_stage_presets_and_precedence():
    config = load_train_config("stage1", None, ["model.name=tiny", "train.lr=0.01"])
    assert config.train.lr == 0.01 and config.train.grad_accum == 2 and not config.alignment.enabled
    assert config.model.llm_config["hidden_size"] == 256  # the registry preset is filled in
    stage2 = load_train_config("stage2", CONFIGS / "tiny_stage2.yaml", ["alignment.alpha=0.5"])
    assert stage2.alignment.enabled and stage2.alignment.alpha == 0.5


def test_bad_configs_give_clear_errors():
    with pytest.raises(ConfigError, match="is a stage2 recipe; run it with `exgra train stage2`"):
        load_train_config("stage1", CONFIGS / "stage2.yaml")
    with pytest.raises(ConfigError, match="unknown config key 'train.learning_rate'"):
        load_train_config("stage1", None, ["train.learning_rate=1"])
    with pytest.raises(ConfigError, match="alignment loss is a stage-2 objective"):
        load_train_config("finetune", None, ["alignment.enabled=true"])
    with pytest.raises(ConfigError, match="data.fraction"):
        load_train_config("stage2", None, ["data.fraction=1.5"])
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        load_train_config("stage2", None, ["model.name=nope"])


def test_parameter_groups_and_stages():
    assert parameter_group("model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight") == "vision"
    assert parameter_group("model.multi_modal_projector.linear_1.weight") == "projector"
    assert parameter_group("model.language_model.layers.0.self_attn.q_proj.weight") == "llm"
    assert parameter_group("lm_head.weight") == "llm"
    assert trainable_groups("stage1") == {"projector"}
    assert trainable_groups("stage2") == {"projector", "llm"}
    assert trainable_groups("finetune", lora=True) == {"projector", "lora"}
    with pytest.raises(ConfigError):
        trainable_groups("stage3")


def test_apply_stage_on_tiny_model():
    from exgra.models import create_model

    model = create_model("tiny").model
    counts = apply_stage(model, "stage1")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("multi_modal_projector" in n for n in trained)
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    apply_stage(model, "stage2")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all("vision_tower" in n for n in frozen)


def test_epoch_batches_are_seeded_and_sharded():
    a = epoch_batches(10, 3, epoch=0, seed=1)
    assert a == epoch_batches(10, 3, epoch=0, seed=1)
    assert a != epoch_batches(10, 3, epoch=1, seed=1)
    assert sorted(i for b in a for i in b) == list(range(10))
    shards = [epoch_batches(7, 2, 0, 1, rank, 2) for rank in range(2)]
    assert len(shards[0]) == len(shards[1])  # padded so every process steps together
    seen = {i for shard in shards for b in shard for i in b}
    assert seen == set(range(7))


def _fake_checkpoint(out: Path, step: int) -> Path:
    tmp = temporary_dir(out, step)
    tmp.mkdir(parents=True)
    save_trainer_state(TrainerState(step=step), tmp)
    return finalize_checkpoint(tmp)


def test_checkpoints_listing_pruning_and_stale_temporaries(tmp_path):
    for step in (5, 10, 15):
        _fake_checkpoint(tmp_path, step)
    # a kill -9 during a save leaves only a temporary directory, which is never resumed from
    temporary_dir(tmp_path, 20).mkdir()
    assert latest_checkpoint(tmp_path).name == "step-000015"
    prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000010", "step-000015"]
    assert not temporary_dir(tmp_path, 20).exists()


def test_output_dir_rules(tmp_path):
    config = load_train_config("stage1", CONFIGS / "tiny_stage1.yaml")
    assert prepare_output_dir(tmp_path / "new", config, resume=False, overwrite=False) is None
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExgraError, match="is not empty and holds no exgra train output"):
        prepare_output_dir(tmp_path, config, resume=False, overwrite=False)
    with pytest.raises(ExgraError, match="never replaces files it did not write"):
        prepare_output_dir(tmp_path, config, resume=False, overwrite=True)
    assert (
        tmp_path / "notes.txt"
    ).read_text() == "mine"  # --overwrite never deletes what a run did not write


def test_shipped_recipes_load_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_train_config("stage2", "stage2_10percent")
    assert config.data.fraction == 0.1 and config.model.path == "runs/stage1_10percent/final"
    with pytest.raises(ConfigError, match="config file not found"):
        load_train_config("stage2", "no_such_recipe")


def test_trackers_never_prompt(monkeypatch):
    import importlib.util

    from exgra.training.logging import prepare_tracker_environment

    assert prepare_tracker_environment("none") is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"needs the tensorboard package: pip install 'exgra\[logging\]'"):
        prepare_tracker_environment("tensorboard")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    note = prepare_tracker_environment("wandb")
    assert "offline" in note
    import os

    assert os.environ["WANDB_MODE"] == "offline"


def test_resume_of_a_run_without_checkpoint_refuses_and_keeps_it(tmp_path):
    from exgra.outputs import claim_folder

    config = load_train_config("stage1", CONFIGS / "tiny_stage1.yaml")
    claim_folder(tmp_path, "train", owned=["metrics.jsonl", "checkpoints"])
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match="holds no complete checkpoint; pass --overwrite"):
        prepare_output_dir(tmp_path, config, resume=True, overwrite=False)
    assert (tmp_path / "metrics.jsonl").read_text() == "{}\n"
    with pytest.raises(ConfigError, match="holds no training run; drop --resume"):
        prepare_output_dir(tmp_path / "new", config, resume=True, overwrite=False)
