"""Stage 2 with the alignment loss in two CPU processes (gloo), graph scope local and global."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.helpers import data_overrides, make_data

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_process_stage2(tmp_path, out, *overrides):  # noqa: ANN001, ANN202
    """``exgra train stage2`` (tiny_stage2 recipe) under ``accelerate launch`` with two gloo processes."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "exgra", "train", "stage2", "--config", str(ROOT / "exgra/configs/tiny_stage2.yaml"),
        "--output-dir", str(out), *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout
    return done


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["local", "global"])
def test_two_process_stage2_with_alignment(tmp_path, scope):
    data = make_data(tmp_path / "data", 32, "pretrain")
    out = tmp_path / "run"
    overrides = ["train.max_steps=3", "train.save_every=2", f"alignment.graph_scope={scope}"]
    done = _two_process_stage2(tmp_path, out, *overrides, *data_overrides(data))
    assert done.stdout.count("final model:") == 1  # printed by the main process only
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["align_loss"] > 0 for r in rows)
    # 2 processes x 8 per device x 3 steps
    assert json.loads((out / "final" / "training_metrics.json").read_text())["samples_seen"] == 48
    checkpoint = out / "checkpoints" / "step-000003"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
    assert (out / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_two_process_stage2_for_a_qwen_family(tmp_path):
    """Qwen2.5-VL's flat patch lists and grids gather and train in two gloo processes."""
    data = make_data(tmp_path / "data", 16, "pretrain")
    out = tmp_path / "run"
    overrides = ["model.name=tiny-qwen2.5-vl", "train.max_steps=3", "train.save_every=2"]
    overrides += ["train.per_device_batch_size=4", "data.max_length=128"]
    _two_process_stage2(tmp_path, out, *overrides, *data_overrides(data))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["align_loss"] > 0 for r in rows)
    assert json.loads((out / "final" / "training_metrics.json").read_text())["samples_seen"] == 24
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl"
