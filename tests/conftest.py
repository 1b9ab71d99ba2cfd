"""Shared fixtures: the suite runs offline, on the CPU, with tiny models."""

from __future__ import annotations

import os

# Nothing in the test-suite may reach a model hub or an LLM API.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import sys
from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def one_thread():
    """One torch intra-op thread: the test machine's 2 cores are shared, and one thread is far faster
    than two fighting ones."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def run_exgra(capsys, monkeypatch):
    """Run the real ``exgra`` entry point in-process; return exit code, stdout and stderr."""
    from exgra.cli import main

    def _run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["exgra", *map(str, args)])
        monkeypatch.setenv("COLUMNS", "200")
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return _run
