"""``exgra eval vqa-rad | slake | pathvqa | vqa``: batched answers for a VQA test JSON, then scores."""

from __future__ import annotations

from pathlib import Path

import typer

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
        model: Path = typer.Option(..., "--model", help="Directory of a saved exgra model."),
        data: Path = typer.Option(..., "--data", help="Test JSON (records with id, image, conversations)."),
        images: Path = typer.Option(..., "--images", help="Folder the records' image paths are relative to."),
        output: Path = typer.Option(..., "--output", "-o", help="Answers JSONL to write."),
        batch_size: int = typer.Option(16, "--batch-size", min=1, help="Questions per generate call."),
        max_new_tokens: int | None = typer.Option(
            None,
            "--max-new-tokens",
            min=1,
            help="Longest answer in tokens (default: 1024 like the reference under legacy, else 128).",
        ),
        template: str | None = typer.Option(
            None,
            "--template",
            help="Conversation template: legacy, chat or mistral_instruct (default: the model's own).",
        ),
        dtype: str = typer.Option(
            "auto",
            "--dtype",
            help="auto (fp32 CPU; GPU: fp16 under legacy like the reference, else bf16) or a dtype.",
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        image_ablation: str = typer.Option(
            "none", "--image-ablation", help="Blind-image control: none, blank, noise or shuffle."
        ),
        protocol: str = typer.Option(
            "exgra-med",
            "--protocol",
            help="Prompt + decoding + scorer: exgra-med, llava-med, medevalkit, tokenized-f1, strict.",
        ),
        controls: str | None = typer.Option(
            None,
            "--controls",
            help="Also answer with blank, noise and/or shuffled images (comma-separated) and report "
            "image reliance.",
        ),
        scorer: str | None = typer.Option(
            None, "--scorer", help="exgra-med scorer variant: legacy, llava-med, llava-med-pre35, strict."
        ),
        prompt_tokenization: str = typer.Option(
            "fast",
            "--prompt-tokenization",
            help="fast (the reference's eval tokenizer) or slow (its training-time tokenisation).",
        ),
        candidates: Path | None = typer.Option(None, "--candidates", help="candidate.json (open accuracy)."),
        judge_model: str | None = typer.Option(
            None, "--judge-model", help="LLM judge for open answers (medevalkit protocol)."
        ),
        judge_base_url: str | None = typer.Option(None, "--judge-base-url", help="Endpoint of the judge."),
        no_score: bool = typer.Option(False, "--no-score", help="Only write answers; do not score them."),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N questions."),
        seed: int = typer.Option(2802, "--seed", help="Seed recorded with the run (the reference's 2802)."),
        resume: bool = typer.Option(False, "--resume", help="Keep the output; answer missing ids."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    ) -> None:
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
                "scorer": scorer,
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
