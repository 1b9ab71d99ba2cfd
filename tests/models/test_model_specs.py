"""The torch-free registry (exgra.model_specs): its parameter counts are the built models', and the light
commands (``exgra models``, ``--help``, ``--version``) never import torch or transformers (#12.15)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from exgra.models import create_model, list_models

# Runs the real entry point once per argv in one fresh process, then reports what got imported.
_LIGHT_RUN = """
import json, sys
from exgra.cli import COMMAND_MODULES, main
runs = [["--help"], ["--version"], ["models"]]
runs += [[name.replace("_", "-"), "--help"] for name in COMMAND_MODULES]
codes = {}
for argv in runs:
    sys.argv = ["exgra", *argv]
    try:
        main()
        codes[" ".join(argv)] = 0
    except SystemExit as exc:
        codes[" ".join(argv)] = exc.code or 0
    if argv == ["models"]:
        print("<<table", flush=True)
        heavy_after_models = sorted(m for m in ("torch", "transformers") if m in sys.modules)
print("<<report" + json.dumps({"codes": codes, "heavy_after_models": heavy_after_models,
      "heavy": sorted(m for m in ("torch", "transformers") if m in sys.modules)}))
"""


def _built_parameter_count(name: str, offline: bool) -> int:
    bundle = create_model(name, device=None if offline else "meta")
    return sum(p.numel() for p in bundle.model.parameters())


@pytest.fixture(scope="module")
def built_counts() -> dict[str, int]:
    """The independent oracle: every entry built (real presets on the meta device) and counted."""
    return {spec.name: _built_parameter_count(spec.name, spec.offline) for spec in list_models()}


def test_stored_parameter_counts_are_the_built_models(built_counts):
    for spec in list_models():
        assert spec.parameter_count == built_counts[spec.name], spec.name


def test_light_commands_import_neither_torch_nor_transformers_and_the_table_is_true(built_counts):
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-c", _LIGHT_RUN], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before_table, _, rest = done.stdout.partition("<<table")
    table, _, report_line = rest.partition("<<report")
    report = json.loads(report_line)
    assert set(report["codes"].values()) == {0}, report["codes"]
    assert report["heavy_after_models"] == [] and report["heavy"] == [], report

    # Every entry is a row; its shown size ("≈2.2 M", "≈51 M", "≈7.1 B") is the built model's count
    # rounded to the digits shown, whatever the formatting code does.
    rows = {}
    for line in before_table.splitlines():
        match = re.match(r"│ (\S+)\s+│\s+≈([\d.]+) ([MB]) │", line)
        if match:
            rows[match[1]] = (match[2], match[3])
    assert set(rows) == set(built_counts)
    for name, (number, unit) in rows.items():
        scale = 1e9 if unit == "B" else 1e6
        digits = len(number.partition(".")[2])
        half_step = 0.5 * 10**-digits * scale
        assert abs(float(number) * scale - built_counts[name]) <= half_step, (name, number, unit)
