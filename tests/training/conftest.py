"""Fixtures of the training tests: tiny record sets on real medical images (one per test module)."""

from __future__ import annotations

import pytest

from tests.training.helpers import make_data


@pytest.fixture(scope="module")
def pretrain_data(tmp_path_factory) -> dict[str, str]:
    return make_data(tmp_path_factory.mktemp("pretrain"), 32, "pretrain")


@pytest.fixture(scope="module")
def vqa_data(tmp_path_factory) -> dict[str, str]:
    return make_data(tmp_path_factory.mktemp("vqa"), 32, "vqa")
