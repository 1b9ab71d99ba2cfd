"""The demo's outputs: ``results.json``, the markdown ``report.md``, the ``scores.png`` plot, a rich table."""

from __future__ import annotations

import io
import json
import os
import platform
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exgra.demo.results import SCORE_COLUMNS, GroupSummary, RunScore, collect_scores, summarize
from exgra.demo.settings import ARM_DESCRIPTIONS, ARMS, DemoSettings, fraction_name
from exgra.io import write_bytes_atomic, write_text_atomic

__all__ = ["DemoOutputs", "plot_scores", "results_table", "write_outputs", "write_report"]

REPORT_FILE = "report.md"
RESULTS_FILE = "results.json"
PLOT_FILE = "scores.png"
DATA_DIR_NAME = "data"
_ARM_STYLE = {"autoregressive": ("tab:gray", "o"), "exgra": ("tab:blue", "s")}


@dataclass
class DemoOutputs:
    report: Path
    plot: Path | None
    results: Path
    summary: list[GroupSummary]


def _percent(fraction: float) -> str:
    return fraction_name(fraction).replace("pct", " %")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def plot_scores(summary: list[GroupSummary], path: str | Path) -> Path | None:
    """Score against pre-training data fraction, one line per arm (mean over seeds, error bar = std).

    Three panels: open recall, closed accuracy and their average. Returns None when there is nothing
    to plot.
    """
    if not summary:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed; also safe when a GUI backend is configured
    import matplotlib.pyplot as plt

    path = Path(path)
    fractions = sorted({row.fraction for row in summary})
    figure, axes = plt.subplots(1, len(SCORE_COLUMNS), figsize=(4.2 * len(SCORE_COLUMNS), 3.6), sharex=True)
    for axis, (key, label) in zip(axes, SCORE_COLUMNS, strict=True):
        for arm, arm_label in ARMS.items():
            rows = [row for row in summary if row.arm == arm and getattr(row, key).mean is not None]
            if not rows:
                continue
            colour, marker = _ARM_STYLE.get(arm, (None, "o"))
            axis.errorbar(
                [row.fraction * 100 for row in rows],
                [getattr(row, key).mean for row in rows],
                yerr=[getattr(row, key).std or 0.0 for row in rows],
                label=arm_label,
                color=colour,
                marker=marker,
                capsize=4,
            )
        axis.set_title(label)
        axis.set_xlabel("pre-training data (%)")
        axis.set_ylabel("score (%)")
        axis.set_ylim(0, 100)  # the full scale: small differences between arms should look small
        if len(fractions) > 1 and fractions[-1] / fractions[0] >= 5:
            axis.set_xscale("log")
        axis.set_xticks([f * 100 for f in fractions], [_percent(f) for f in fractions])
        axis.minorticks_off()
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    seeds = max(row.average.n for row in summary)
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed, no spread"
    figure.suptitle(f"exgra demo: tiny model on CPU, test split, {spread}", fontsize="medium")
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(figure)
    write_bytes_atomic(path, image.getvalue())
    return path


def results_table(summary: list[GroupSummary], title: str = "exgra demo: test-split scores (%)") -> Any:
    """The results as a rich table (mean ± std over seeds)."""
    from rich.table import Table

    table = Table(
        title=title,
        caption="data: fraction of the pre-training records (stages 1 and 2); "
        "autoregressive: stage 2 without the alignment loss (LLaVA-Med style)",
    )
    table.add_column("data", justify="right", no_wrap=True)
    table.add_column("arm", no_wrap=True)
    for _, label in SCORE_COLUMNS:
        table.add_column(label, justify="right", no_wrap=True)
    table.add_column("seeds", justify="right")
    for row in summary:
        table.add_row(
            _percent(row.fraction),
            ARMS[row.arm],
            *(getattr(row, key).format() for key, _ in SCORE_COLUMNS),
            str(row.average.n),
        )
    return table


def _dataset_section(data: Path) -> list[str]:
    lines = ["## Data", ""]
    counts = {}
    for name in ("pretrain", "train", "val", "test"):
        path = data / f"{name}.json"
        counts[name] = len(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else 0
    images = len(list((data / "images").glob("*.png"))) if (data / "images").is_dir() else 0
    lines += [
        f"The demo dataset (`exgra prepare demo`, in `{DATA_DIR_NAME}/`): {images} images made from "
        "real medical "
        f"images that ship inside pip packages; {counts['pretrain']} pre-training records (stages 1 and 2), "
        f"VQA questions train {counts['train']} / val {counts['val']} / test {counts['test']}. Every "
        "answer is a "
        "fact the builder knows (modality, body region, flip, rotation, a drawn marker); see "
        "docs/demo_data.md.",
        "",
    ]
    sources_path = data / "sources.json"
    if sources_path.is_file():
        sources = json.loads(sources_path.read_text(encoding="utf-8"))
        lines += [
            "Source images and their licences:",
            "",
            "| package | file | content | licence |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {s.get('package', '')} | {s.get('file', '')} | {s.get('content', '')} | "
            f"{s.get('licence', '')} |"
            for s in sources
        ]
        lines.append("")
    return lines


def _timing_section(timings: dict[str, float]) -> list[str]:
    by_kind: dict[str, float] = defaultdict(float)
    for key, seconds in timings.items():
        by_kind[key.rsplit("/", 1)[-1]] += seconds
    total = sum(timings.values())
    lines = [
        "## Time",
        "",
        f"Compute time of all phases: **{total:.0f} s** ({total / 60:.1f} min) on {platform.machine()} with "
        f"{os.cpu_count()} CPU core(s) (phases resumed from an earlier run keep their first timing).",
        "",
        "| phase | seconds (all runs) |",
        "|---|---:|",
    ]
    names = {
        "data": "demo dataset",
        "stage1": "stage 1",
        "stage2": "stage 2",
        "finetune": "fine-tune",
        "eval": "eval (generation)",
        "score": "score",
    }
    for kind in ("data", "stage1", "stage2", "finetune", "eval", "score"):
        if kind in by_kind:
            lines.append(f"| {names[kind]} | {by_kind[kind]:.1f} |")
    lines.append("")
    return lines


def reliance_files(output_dir: Path, settings: DemoSettings) -> dict[str, Path]:
    """Arm -> the image-reliance JSON of its seed-0, largest-fraction run (those that exist)."""
    base = Path(output_dir) / fraction_name(settings.fractions[-1]) / "seed0"
    paths = {arm: base / arm / "answers.reliance.json" for arm in ARMS}
    return {arm: path for arm, path in paths.items() if path.is_file()}


def _reliance_section(output_dir: Path, settings: DemoSettings) -> list[str]:
    from exgra.eval.controls import RelianceReport

    lines = [
        f"## Image reliance ({_percent(settings.fractions[-1])} data, seed 0)",
        "",
        "The test split answered again with a blank (grey) image, seeded noise, and another question's "
        "image (`exgra eval ... --controls blank,noise,shuffle`). A model that ignores the image keeps its "
        "answers (unchanged 100 %, drop 0).",
        "",
    ]
    for arm, path in reliance_files(output_dir, settings).items():
        report = RelianceReport(json.loads(path.read_text(encoding="utf-8")))
        lines.append(report.markdown(ARMS[arm]))
    return lines


def _settings_section(settings: DemoSettings) -> list[str]:
    lines = ["## Settings", "", "| setting | value |", "|---|---|"]
    for key, value in settings.model_dump(mode="json").items():
        lines.append(f"| `{key}` | {value} |")
    lines.append("")
    return lines


def write_report(
    output_dir: str | Path,
    settings: DemoSettings,
    scores: list[RunScore],
    summary: list[GroupSummary],
    timings: dict[str, float],
    plot: Path | None,
) -> Path:
    """Write ``report.md``: what was run, the results (mean ± std and per run), data, settings, time."""
    output_dir = Path(output_dir)
    s = settings
    arms = " and ".join(f"**{ARMS[arm]}** ({text})" for arm, text in ARM_DESCRIPTIONS.items())
    seeds = "seed 0" if s.seeds == 1 else f"each seed (0..{s.seeds - 1})"
    lines = [
        "# exgra demo: ExGra-Med alignment vs. autoregressive pre-training",
        "",
        "> **A CPU-scale illustration, not the paper's experiment.** The model is the randomly initialised "
        f"`{s.model}` model (about 2 M parameters), trained for seconds on a few hundred synthetic questions "
        "about real medical images. It shows the whole pipeline and the data-efficiency comparison of "
        "ExGra-Med (NeurIPS 2025) working end to end; its numbers say nothing about how ExGra-Med or "
        "LLaVA-Med "
        "perform at scale. Every number below was produced by this run and is reported as it is.",
        "",
        "## What was run",
        "",
        f"For {seeds} and each pre-training data fraction "
        f"({', '.join(_percent(f) for f in s.fractions)}), two arms: {arms}.",
        "",
        "1. **Stage 1** (`exgra train stage1`): projector only, language-model loss, "
        f"{s.epochs('stage1'):g} epoch(s) over the fraction of the pre-training records. Stage 1 does "
        "not use "
        "the alignment loss, so **both arms share one stage-1 run per (fraction, seed)**.",
        "2. **Stage 2** (`exgra train stage2`): LLM + projector, "
        f"{s.epochs('stage2'):g} epoch(s) over the same records; the ExGra-Med arm adds "
        f"{s.alignment_alpha:g} × the multi-graph alignment loss, the autoregressive arm trains the "
        "language-model "
        "loss only (LLaVA-Med style). Within a seed both arms start from the same weights and see the same "
        "records in the same order: the alignment loss is the only difference.",
        f"3. **Fine-tuning** (`exgra finetune`): {s.scaled_finetune_steps()} steps on the whole VQA "
        "train split "
        "(the final model is evaluated; no validation-based selection).",
        "4. **Eval** (`exgra eval vqa`): greedy answers for the **test split**, then **score** "
        "(`exgra score`, "
        f"`{s.scorer}` scorer): open recall (token recall of open answers, the papers' "
        '"open" column), closed accuracy, and their average.',
        "",
        "The same number of epochs on less data means proportionally fewer pre-training steps, as in "
        "the paper's "
        "10 % / 100 % comparison.",
        "",
        "## Results (test split, %, mean ± sample std over seeds)",
        "",
        "| pre-training data | arm | open recall | closed accuracy | average | seeds |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in summary:
        cells = " | ".join(getattr(row, key).format() for key, _ in SCORE_COLUMNS)
        lines.append(f"| {_percent(row.fraction)} | {ARMS[row.arm]} | {cells} | {row.average.n} |")
    lines.append("")
    if plot is not None:
        lines += [f"![scores against pre-training data fraction]({plot.name})", ""]
    lines += [
        "### Every run",
        "",
        "| pre-training data | seed | arm | open recall | closed accuracy | average | open / closed "
        "questions | metrics |",
        "|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for score in scores:
        relative = Path(score.metrics_path).resolve().relative_to(output_dir.resolve())
        lines.append(
            f"| {_percent(score.fraction)} | {score.seed} | {ARMS[score.arm]} | "
            f"{_number(score.open_recall)} | "
            f"{_number(score.closed_accuracy)} | {_number(score.average)} | {score.num_open} / "
            f"{score.num_closed} | "
            f"[{relative}]({relative}) |"
        )
    lines.append("")
    lines += _reliance_section(output_dir, settings)
    lines += _dataset_section(output_dir / DATA_DIR_NAME)
    lines += _settings_section(settings)
    lines += _timing_section(timings)
    lines += [
        "## Files",
        "",
        "`<fraction>/seed<k>/stage1/` (shared), `<fraction>/seed<k>/<arm>/{stage2,finetune}/` (checkpoints, "
        "`final/` model, `metrics.jsonl` training curves), `<arm>/answers.jsonl` and "
        "`<arm>/metrics.json`; each "
        "training phase's recipe is the `.yaml` beside its folder and its console output the `.log`. "
        "`results.json` holds these tables as data.",
        "",
    ]
    path = output_dir / REPORT_FILE
    write_text_atomic(path, "\n".join(lines))
    return path


def write_outputs(output_dir: str | Path, settings: DemoSettings, timings: dict[str, float]) -> DemoOutputs:
    """Collect the scores; write ``results.json``, ``scores.png`` and ``report.md``."""
    output_dir = Path(output_dir)
    scores = collect_scores(output_dir, settings)
    summary = summarize(scores)
    plot = plot_scores(summary, output_dir / PLOT_FILE)
    results_path = output_dir / RESULTS_FILE
    payload = {
        "settings": settings.model_dump(mode="json"),
        "summary": [row.to_dict() for row in summary],
        "runs": [asdict(score) for score in scores],
        "timings_s": timings,
    }
    write_text_atomic(results_path, json.dumps(payload, indent=2) + "\n")
    report = write_report(output_dir, settings, scores, summary, timings, plot)
    return DemoOutputs(report, plot, results_path, summary)
