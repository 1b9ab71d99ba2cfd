"""``exgra eval vqa-rad | slake | pathvqa | vqa``: batched answers for a VQA test JSON, then scores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from exgra.choices import ImageAblation, PromptTokenization, ScorerName
from exgra.cli.options import (
    Device,
    Dtype,
    Images,
    JudgeBaseUrl,
    JudgeModel,
    Limit,
    ModelDir,
    Overwrite,
    Template,
)

DATASETS = {
    "vqa-rad": "VQA-RAD",
    "slake": "SLAKE (English)",
    "pathvqa": "PathVQA",
    "vqa": "any VQA test JSON in the REFERENCE §4.4 format",
}


def print_metrics_table(metrics: dict, title: str) -> None:
    """Numeric metrics (percent) as a rich table; ``None`` (no item of that kind) shows as ``-``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, bool) or not (value is None or isinstance(value, (int, float))):
            continue
        shown = "-" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))
        table.add_row(key, shown)
    Console().print(table)


def _command(dataset: str, title: str):  # noqa: ANN202 - typer reads the signature
    def command(
        model: ModelDir,
        data: Annotated[
            Path, typer.Option("--data", help="Test JSON (records with id, image, conversations).")
        ],
        images: Images,
        output: Annotated[Path, typer.Option("--output", "-o", help="Answers JSONL to write.")],
        batch_size: Annotated[
            int, typer.Option("--batch-size", min=1, help="Questions per generate call.")
        ] = 16,
        max_new_tokens: Annotated[
            int | None,
            typer.Option(
                "--max-new-tokens",
                min=1,
                help="Longest answer in tokens (default: 1024 like the reference under legacy, else 128).",
            ),
        ] = None,
        template: Template = None,
        dtype: Dtype = "auto",
        device: Device = "auto",
        image_ablation: Annotated[
            ImageAblation,
            typer.Option("--image-ablation", help="Blind-image control: none, blank, noise or shuffle."),
        ] = "none",
        prompt_tokenization: Annotated[
            PromptTokenization,
            typer.Option(
                "--prompt-tokenization",
                help="fast (the reference's eval tokenizer) or slow (its training-time tokenisation).",
            ),
        ] = "fast",
        protocol: Annotated[
            str,
            typer.Option(
                "--protocol",
                help="Prompt + decoding + scorer: exgra-med, llava-med, medevalkit, tokenized-f1, strict.",
            ),
        ] = "exgra-med",
        controls: Annotated[
            str | None,
            typer.Option(
                "--controls",
                help="Also answer with blank, noise and/or shuffled images (comma-separated) and report "
                "image reliance.",
            ),
        ] = None,
        scorer: Annotated[
            ScorerName,
            typer.Option("--scorer", help="exgra-med scorer variant (see exgra score --help)."),
        ] = "legacy",
        judge_model: JudgeModel = None,
        judge_base_url: JudgeBaseUrl = None,
        candidates: Annotated[
            Path | None, typer.Option("--candidates", help="candidate.json (open accuracy).")
        ] = None,
        no_score: Annotated[
            bool, typer.Option("--no-score", help="Only write answers; do not score them.")
        ] = False,
        limit: Limit = None,
        seed: Annotated[
            int, typer.Option("--seed", help="Seed recorded with the run (the reference's 2802).")
        ] = 2802,
        resume: Annotated[
            bool, typer.Option("--resume", help="Keep the output; answer missing ids (same settings).")
        ] = False,
        overwrite: Overwrite = False,
    ) -> None:
        from exgra.cli import set_interrupt_hint
        from exgra.config import validate_config
        from exgra.eval.controls import parse_controls, run_controls
        from exgra.eval.vqa import VQAEvalConfig, run_vqa_eval

        control_names = parse_controls(controls)

        config = validate_config(
            VQAEvalConfig,
            {
                "model": model,
                "data": data,
                "images": images,
                "output": output,
                "dataset": dataset,
                "batch_size": batch_size,
                "max_new_tokens": max_new_tokens,
                "template": template,
                "dtype": dtype,
                "device": device,
                "image_ablation": image_ablation,
                "protocol": protocol,
                "prompt_tokenization": prompt_tokenization,
                "scorer": None if scorer == "legacy" and protocol != "exgra-med" else scorer,
                "candidates": candidates,
                "judge_model": judge_model,
                "judge_base_url": judge_base_url,
                "score": not no_score,
                "limit": limit,
                "seed": seed,
                "resume": resume,
                "overwrite": overwrite,
            },
            "command-line options",
        )
        if control_names and image_ablation != "none":
            from exgra.errors import ConfigError

            raise ConfigError("--controls compares with the real image: leave --image-ablation at none")
        set_interrupt_hint("finished answers are kept: rerun with --resume to continue")
        result = run_vqa_eval(config)
        reliance = run_controls(config, control_names) if control_names else None
        if result.process_index != 0:
            return  # the main process reports for all
        typer.echo(
            f"{result.num_questions} answers in {result.answers_path} "
            f"({result.num_generated} generated, {result.num_resumed} from before) in {result.seconds:.1f} s"
        )
        if result.metrics is not None:
            scorer_name = result.metrics["scorer"]["name"]
            print_metrics_table(result.metrics, f"{title} ({config.protocol} protocol, {scorer_name} scorer)")
            typer.echo(f"metrics: {result.metrics_path}")
        if reliance is not None:
            from rich.console import Console

            Console().print(reliance.rich_table(f"{title}: image reliance ({config.protocol})"))
            typer.echo(f"reliance: {reliance.json_path} and {reliance.markdown_path}")

    command.__doc__ = (
        f"Generate answers for {title} with batched greedy decoding; resumable; scores at the end.\n\n"
        "Shard across GPUs with: accelerate launch -m exgra eval ... (answers are merged in question order)."
    )
    return command


def register(eval_app: typer.Typer) -> None:
    for dataset, title in DATASETS.items():
        eval_app.command(dataset)(_command(dataset, title))
