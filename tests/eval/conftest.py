"""Shared by the eval tests: one torch thread (autouse). Builders live in tests/eval/helpers.py."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machine's 2 cores are shared; one intra-op thread is far faster than two fighting ones.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
