"""Shared by the eval tests: one torch thread for every test. Builders live in tests/eval/helpers.py."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
