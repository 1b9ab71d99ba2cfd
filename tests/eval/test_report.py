"""``exgra report`` on real metrics files written by ``exgra eval`` and ``exgra score``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.eval.helpers import build_demo, save_tiny_model


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    from exgra.eval.vqa import VQAEvalConfig, run_vqa_eval

    root = tmp_path_factory.mktemp("report")
    demo = build_demo(root / "demo", num_samples=40)
    written = []
    for seed, protocol in ((0, "exgra-med"), (0, "medevalkit"), (1, "exgra-med")):
        model = root / f"model-{seed}"
        if not model.exists():
            save_tiny_model(model, seed=seed)
        output = root / "runs" / f"{model.name}-{protocol}" / "answers.jsonl"
        config = VQAEvalConfig(
            model=model, data=demo.test, images=demo.image_folder, output=output, dataset="demo",
            protocol=protocol, max_new_tokens=3, progress=False,
        )  # fmt: skip
        written.append(run_vqa_eval(config).metrics_path)
    return root, written


def test_report_table_markdown_csv_and_plot(runs, tmp_path: Path, run_exgra) -> None:
    root, files = runs
    # A metrics file of `exgra score` without a protocol (scorer only) joins the table too.
    answers = files[0].with_name("answers.jsonl")
    scored = tmp_path / "strict.metrics.json"
    gt = json.loads(files[0].read_text())["run"]["data"]
    assert (
        run_exgra("score", "--gt", gt, "--pred", answers, "--scorer", "strict", "-o", scored).exit_code == 0
    )
    outputs = [tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "t.png"]
    result = run_exgra(
        "report", root / "runs", scored,
        "--markdown", outputs[0], "--csv", outputs[1], "--plot", outputs[2],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "exgra report" in result.stdout and "medevalkit v1" in result.stdout

    rows = list(csv.DictReader(io.StringIO(outputs[1].read_text())))
    assert len(rows) == 4
    by_file = {Path(row["file"]).resolve(): row for row in rows}
    for path in files:
        metrics = json.loads(path.read_text())
        row = by_file[path.resolve()]
        protocol = metrics["protocol"]["name"]
        assert row["protocol"] == f"{protocol} v1" and row["dataset"] == "demo" and row["images"] == "real"
        assert row["model"] == Path(metrics["run"]["model"]).name
        assert int(row["n"]) == metrics["num_open"] + metrics["num_closed"]
        if protocol == "exgra-med":
            expected = [metrics["recall"], metrics["closed_accuracy"]]
            expected.append(sum(expected) / 2)
        else:
            expected = [metrics["open_exact_match"], metrics["closed_accuracy"], metrics["accuracy"]]
        assert [float(row[k]) for k in ("open", "closed", "overall")] == pytest.approx(expected)
    legacy = by_file[scored.resolve()]
    strict = json.loads(scored.read_text())
    assert legacy["protocol"] == "strict (strict v1)"
    assert float(legacy["open"]) == pytest.approx(strict["exact_match"])

    markdown = outputs[0].read_text().splitlines()
    assert len(markdown) == 2 + 4 and markdown[0].startswith("| model | dataset | protocol")
    assert outputs[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = run_exgra("report", root / "runs", "--csv", outputs[1])
    assert again.exit_code == 1 and "--overwrite" in again.stderr
    missing = run_exgra("report", tmp_path / "nothing-here")
    assert missing.exit_code == 1 and "neither a metrics file nor a folder" in missing.stderr


def test_same_label_rows_are_told_apart_by_folder(runs, tmp_path: Path) -> None:
    from exgra.eval.compare import load_rows

    _, files = runs
    # The demo's layout: <fraction>/seed<k>/<arm>/metrics.json, score output without run info.
    metrics = json.loads(files[0].read_text())
    metrics.pop("run")
    for fraction in ("10pct", "100pct"):
        folder = tmp_path / fraction / "seed0" / "exgra"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(metrics))
    other = tmp_path / "10pct" / "seed0" / "exgra" / "stage2" / "metrics.json"
    other.parent.mkdir()
    other.write_text('{"loss": 1.0}')  # a metrics.json that is not VQA metrics: skipped
    rows = load_rows([tmp_path])
    assert sorted(row.model for row in rows) == ["100pct/seed0/exgra", "10pct/seed0/exgra"]
