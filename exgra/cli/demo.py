"""``exgra demo``: stage 1, stage 2 (two arms), fine-tuning, eval and score on the demo data, on a CPU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer


def _fractions(text: str | None) -> list[float] | None:
    """``"0.1,1.0"`` or ``"10%,100%"`` -> ``[0.1, 1.0]``."""
    from exgra.errors import ConfigError

    if text is None:
        return None
    values = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            values.append(float(part[:-1]) / 100 if part.endswith("%") else float(part))
        except ValueError:
            raise ConfigError(
                f"--fractions takes numbers such as 0.1,1.0 or 10%,100%, got {text!r}"
            ) from None
    return values


def demo(
    quick: bool = typer.Option(False, "--quick", help="One seed (about 1.5 minutes on 2 CPU cores)."),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", "-o", help="Where everything goes (default: exgra-demo, or exgra-demo-quick)."
    ),
    seeds: int | None = typer.Option(
        None, "--seeds", min=1, help="Seeds per arm and fraction (default: 3; 1 with --quick)."
    ),
    fractions: str | None = typer.Option(
        None, "--fractions", help="Pre-training data fractions, comma-separated (default: 0.1,1.0)."
    ),
    steps_scale: float | None = typer.Option(
        None, "--steps-scale", hidden=True, help="Multiply every epoch and step count (tests, experiments)."
    ),
    num_samples: int | None = typer.Option(
        None, "--num-samples", hidden=True, help="VQA questions in the demo dataset (default: 400)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="CPU threads for torch (default: half the cores, at most 4)."
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Show each phase's own output and progress bars."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Offline registry entry every arm starts from (tiny, tiny-qwen2.5-vl, tiny-gemma3, ...).",
    ),
) -> None:
    """Run the ExGra-Med pipeline on real medical images with the tiny model, offline, on a CPU.

    Two arms (stage 2 without the alignment loss, as LLaVA-Med; stage 2 with the multi-graph alignment loss)
    at two pre-training data fractions: stage 1, stage 2, fine-tuning, eval and score for each.

    Prints a results table and writes report.md and scores.png. Rerun the same command to resume.
    """
    from rich.console import Console

    from exgra.demo import demo_settings, results_table, run_demo

    # The demo needs no hub and no API: make sure nothing tries one.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    settings = demo_settings(
        quick=quick,
        seeds=seeds,
        fractions=_fractions(fractions),
        steps_scale=steps_scale,
        num_samples=num_samples,
        model=model,
    )
    output_dir = output_dir or Path("exgra-demo-quick" if quick else "exgra-demo")
    console = Console(file=sys.stdout)
    console.print(
        f"exgra demo → {output_dir}: {settings.seeds} seed(s) × {len(settings.fractions)} data "
        "fraction(s) × 2 arms, "
        f"model {settings.model} (CPU-scale illustration, not the paper's experiment)",
        highlight=False,
    )

    def on_phase(event) -> None:  # noqa: ANN001 - PhaseEvent
        status = "[dim]done before[/dim]" if event.skipped else f"{event.seconds:6.1f} s"
        console.print(f"[{event.index:>3}/{event.total}] {event.name:<52} {status}", highlight=False)

    try:
        result = run_demo(output_dir, settings, on_phase=on_phase, quiet=not verbose, threads=threads)
    except KeyboardInterrupt:
        console.print(f"interrupted; rerun the same command to resume from {output_dir}", style="yellow")
        raise typer.Exit(130) from None
    if result.interrupted:
        console.print(f"stopped; rerun the same command to resume from {output_dir}", style="yellow")
        raise typer.Exit(130)
    console.print(results_table(result.summary))
    _print_reliance(console, output_dir, settings)
    console.print(
        f"report: {result.report_path}\nplot:   {result.plot_path}\ntook {result.seconds:.0f} s",
        highlight=False,
    )


def _print_reliance(console, output_dir: Path, settings) -> None:  # noqa: ANN001 - rich Console, DemoSettings
    import json

    from exgra.demo.report import reliance_files
    from exgra.demo.settings import ARMS
    from exgra.eval.controls import RelianceReport

    for arm, path in reliance_files(output_dir, settings).items():
        report = RelianceReport(json.loads(path.read_text(encoding="utf-8")))
        console.print(report.rich_table(f"image reliance: {ARMS[arm]}"))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
