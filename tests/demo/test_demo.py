"""``exgra demo`` end to end on a reduced setting: phases, layout, report/table/plot numbers, resume."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from exgra.demo import ARMS, RunScore, Stat, demo_settings, run_demo, summarize
from exgra.errors import ConfigError, ExgraError

# Tiny: ~2 pre-training steps per stage, 5 fine-tuning steps, 9 test questions.
REDUCED = {"quick": True, "steps_scale": 0.05, "num_samples": 60}
CLI_REDUCED = ("--quick", "--steps-scale", "0.05", "--num-samples", "60")
RUNS = [(fraction, arm) for fraction in ("10pct", "100pct") for arm in ARMS]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo") / "out"
    events = []
    result = run_demo(output, demo_settings(**REDUCED), on_phase=events.append)
    return output, result, events


def _metrics(output: Path) -> dict[tuple[str, str], dict]:
    return {
        (fraction, arm): json.loads((output / fraction / "seed0" / arm / "metrics.json").read_text())
        for fraction, arm in RUNS
    }


def test_every_phase_runs_once_in_order(demo_run):
    _, result, events = demo_run
    assert not result.interrupted
    # 1 + 2 fractions x (1 + 2 arms x 4) + the image-reliance controls of both arms once
    assert [e.index for e in events] == list(range(1, 22)) and all(e.total == 21 for e in events)
    assert not any(e.skipped for e in events)
    assert events[0].name == "demo dataset" and "stage 1" in events[1].name
    assert [e.name.rsplit(": ", 1)[-1] for e in events[2:6]] == [
        "stage 2",
        "fine-tune",
        "eval (test split)",
        "score",
    ]


def test_arms_differ_only_in_the_alignment_loss(demo_run):
    output, _, _ = demo_run
    for fraction in ("10pct", "100pct"):
        base = output / fraction / "seed0"
        stage1 = yaml.safe_load((base / "stage1" / "config.yaml").read_text())
        assert stage1["alignment"]["enabled"] is False
        configs = {arm: yaml.safe_load((base / arm / "stage2" / "config.yaml").read_text()) for arm in ARMS}
        assert configs["autoregressive"]["alignment"]["enabled"] is False
        assert configs["exgra"]["alignment"]["enabled"] is True
        for config in configs.values():
            # both arms start from the one shared stage-1 model, on the same seeded data subset
            assert Path(config["model"]["path"]) == (base / "stage1" / "final").resolve()
            assert config["data"]["fraction"] == stage1["data"]["fraction"]
            assert config["train"]["seed"] == stage1["train"]["seed"] == 0
        a, b = (dict(configs[arm]) for arm in ARMS)
        for config in (a, b):
            config.pop("alignment"), config.pop("output_dir")
        assert a == b
        assert stage1["data"]["fraction"] == (0.1 if fraction == "10pct" else 1.0)
        # The finetuned model was trained from its arm's stage 2 and evaluated on the test split.
        for arm in ARMS:
            finetune = yaml.safe_load((base / arm / "finetune" / "config.yaml").read_text())
            assert Path(finetune["model"]["path"]) == (base / arm / "stage2" / "final").resolve()
            answers = (base / arm / "answers.jsonl").read_text().splitlines()
            assert len(answers) == len(json.loads((output / "data" / "test.json").read_text()))


def test_report_table_and_plot_hold_the_scorer_numbers(demo_run):
    output, result, _ = demo_run
    metrics = _metrics(output)
    report = (output / "report.md").read_text()
    assert "CPU-scale illustration, not the paper's experiment" in report
    assert "share one stage-1 run" in report
    sources = json.loads((output / "data" / "sources.json").read_text())
    assert all(source["licence"] in report for source in sources)
    for (fraction, arm), values in metrics.items():
        recall, closed = values["recall"], values["closed_accuracy"]
        average = (recall + closed) / 2
        percent = fraction.replace("pct", " %")
        row = f"| {percent} | 0 | {ARMS[arm]} | {recall:.2f} | {closed:.2f} | {average:.2f} |"
        assert row in report, row
        # one seed: the summary row holds the same numbers without a spread
        assert f"| {percent} | {ARMS[arm]} | {recall:.2f} | {closed:.2f} | {average:.2f} | 1 |" in report
        summary = next(r for r in result.summary if r.arm == arm and f"{r.fraction * 100:g}pct" == fraction)
        assert summary.open_recall.mean == pytest.approx(recall)
        assert summary.average.mean == pytest.approx(average)
    results = json.loads((output / "results.json").read_text())
    assert len(results["runs"]) == 4 and len(results["summary"]) == 4
    assert {run["open_recall"] for run in results["runs"]} == {v["recall"] for v in metrics.values()}
    with Image.open(output / "scores.png") as image:
        assert image.format == "PNG" and image.size[0] > 600
    assert "scores.png" in report
    total = sum(json.loads((output / "timings.json").read_text()).values())
    assert f"**{total:.0f} s**" in report


def test_ctrl_c_stops_and_a_rerun_resumes_only_what_is_unfinished(tmp_path, monkeypatch):
    import exgra.training

    real_run_training = exgra.training.run_training

    def stop_in_exgra_stage2(config, **kwargs):
        # Press "Ctrl-C" (the loop's stop flag) after the first step of the first ExGra-Med stage 2.
        def stop(info):
            info.stop = True

        if config.alignment.enabled:
            kwargs["callbacks"] = [stop]
        return real_run_training(config, **kwargs)

    output = tmp_path / "out"
    monkeypatch.setattr(exgra.training, "run_training", stop_in_exgra_stage2)
    events = []
    stopped = run_demo(output, demo_settings(**REDUCED), on_phase=events.append)
    assert stopped.interrupted and stopped.report_path is None
    assert events[-1].name == "10% data, seed 0, autoregressive: score"  # the ExGra stage 2 never finished
    stage2 = output / "10pct" / "seed0" / "exgra" / "stage2"
    assert not (stage2 / "final").exists() and list((stage2 / "checkpoints").iterdir())

    monkeypatch.setattr(exgra.training, "run_training", real_run_training)
    events = []
    result = run_demo(output, demo_settings(**REDUCED), on_phase=events.append)
    assert not result.interrupted and result.report_path.is_file()
    assert [e.skipped for e in events[:6]] == [True] * 6 and not any(e.skipped for e in events[6:])
    assert "resumed from" in (stage2.parent / "stage2.log").read_text()

    # A phase that lost its final output runs again from its checkpoint; finished ones are skipped.
    arm = output / "100pct" / "seed0" / "exgra"
    before = json.loads((arm / "metrics.json").read_text())
    shutil.rmtree(arm / "finetune" / "final")
    (arm / "answers.jsonl").unlink()
    (arm / "metrics.json").unlink()
    events = []
    run_demo(output, demo_settings(**REDUCED), on_phase=events.append)
    ran = [e.name for e in events if not e.skipped]
    phases = ("fine-tune", "eval (test split)", "score")
    assert ran == [f"100% data, seed 0, ExGra-Med: {phase}" for phase in phases]
    after = json.loads((arm / "metrics.json").read_text())
    # resumed from the final checkpoint, greedy decoding: the same answers and scores
    assert after["recall"] == before["recall"] and after["closed_accuracy"] == before["closed_accuracy"]


def test_other_settings_or_foreign_folders_are_refused(demo_run, tmp_path):
    output, _, _ = demo_run
    with pytest.raises(ExgraError, match=r"other settings \(seeds: 1 -> 2\)"):
        run_demo(output, demo_settings(**{**REDUCED, "seeds": 2}))
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ExgraError, match="holds no demo run"):
        run_demo(tmp_path, demo_settings(**REDUCED))
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_cli_resumes_and_prints_the_results_table(demo_run, run_exgra):
    output, _, _ = demo_run
    result = run_exgra("demo", *CLI_REDUCED, "--output-dir", output)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("done before") == 21
    assert result.stdout.count("image reliance: ") == len(ARMS)
    metrics = _metrics(output)
    table = result.stdout[result.stdout.index("test-split scores") :]
    for values in metrics.values():
        assert f"{values['recall']:.2f}" in table and f"{values['closed_accuracy']:.2f}" in table
    assert re.search(r"report: .*report\.md", result.stdout)
    bad = run_exgra("demo", *CLI_REDUCED, "--seeds", "2", "--output-dir", output)
    assert bad.exit_code == 1 and "other settings" in bad.stderr


def test_settings_and_options_are_validated(run_exgra, tmp_path):
    assert demo_settings().seeds == 3 and demo_settings(quick=True).seeds == 1
    assert demo_settings(quick=True, seeds=2).seeds == 2
    assert demo_settings(fractions=[1.0, 0.4]).fractions == [0.4, 1.0]
    with pytest.raises(ConfigError, match="fractions"):
        demo_settings(fractions=[0.0, 1.0])
    result = run_exgra("demo", "--fractions", "ten", "--output-dir", tmp_path / "x")
    assert result.exit_code == 1 and "--fractions" in result.stderr
    assert not (tmp_path / "x").exists()


def test_summary_is_mean_and_sample_std_over_seeds():
    scores = [
        RunScore(0.1, seed, "exgra", recall, closed, (recall + closed) / 2, 3, 5, "m.json")
        for seed, (recall, closed) in enumerate([(10.0, 50.0), (20.0, 70.0), (30.0, 60.0)])
    ]
    scores.append(RunScore(0.1, 0, "autoregressive", 5.0, None, 5.0, 3, 0, "m.json"))
    rows = summarize(scores)
    assert [row.arm for row in rows] == ["autoregressive", "exgra"]
    exgra = rows[1]
    assert exgra.open_recall.mean == pytest.approx(20.0) and exgra.open_recall.std == pytest.approx(10.0)
    assert exgra.average.mean == pytest.approx(40.0) and exgra.seeds == [0, 1, 2]
    assert rows[0].closed_accuracy == Stat(None, None, 0) and rows[0].closed_accuracy.format() == "-"
    assert exgra.closed_accuracy.format() == "60.00 ± 10.00"
    assert Stat.of([12.345]).format() == "12.35"


def test_report_has_the_image_reliance_table_of_both_arms(demo_run):
    output, result, _ = demo_run
    report = result.report_path.read_text()
    assert "## Image reliance (100 % data, seed 0)" in report
    for arm in ARMS:
        data = json.loads((output / "100pct" / "seed0" / arm / "answers.reliance.json").read_text())
        assert set(data["groups"]["all"]["controls"]) == {"blank", "noise", "shuffle"}
        # The real-image score of the reliance table is the score of the demo's own metrics file.
        metrics = json.loads((output / "100pct" / "seed0" / arm / "metrics.json").read_text())
        open_n, closed_n = metrics["num_open"], metrics["num_closed"]
        per_question = (metrics["recall"] * open_n + metrics["closed_accuracy"] * closed_n) / (
            open_n + closed_n
        )
        assert data["groups"]["all"]["real"] == pytest.approx(per_question)
    assert report.count("| all |") == 3 * len(ARMS)
