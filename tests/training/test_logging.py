"""The loop logs whatever the training module returns: no loss name is hard-coded in loop or logger."""

from __future__ import annotations

import json

import torch

from exgra.training import run_training
from exgra.training.loop import _progress_detail
from tests.training.helpers import tiny_config


def test_any_loss_or_diagnostic_from_the_module_reaches_the_metrics_log(tmp_path, pretrain_data, monkeypatch):
    from exgra.training.steps import TrainingModule

    original = TrainingModule.forward

    def forward(self, batch):
        losses = original(self, batch)
        losses["extra_loss"] = torch.tensor(0.5)  # a new loss term, logged but not back-propagated here
        losses["certified_share"] = 0.25  # a diagnostic float
        losses["detail/pair"] = 1.0  # a per-pair detail
        return losses

    monkeypatch.setattr(TrainingModule, "forward", forward)
    config = tiny_config("stage1", pretrain_data, "train.max_steps=2", "train.grad_accum=1")
    run_training(config, output_dir=tmp_path / "run", show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["extra_loss"] == 0.5 and row["certified_share"] == 0.25 and row["detail/pair"] == 1.0
        assert list(row)[2] == "loss"  # "loss" first after step and epoch, whatever the module's order


def test_the_progress_bar_shows_every_summary_key():
    shown = _progress_detail({"loss": 1.0, "lm_loss": 0.75, "certified_share": 0.25, "accuracy/a->b": 0.5})
    assert shown == "loss 1.0000 lm_loss 0.7500 certified_share 0.2500"
