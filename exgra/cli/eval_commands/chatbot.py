"""``exgra eval chatbot``: LLM-as-judge scoring of medical visual chat answers (REFERENCE §7.4)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(eval_app: typer.Typer) -> None:
    @eval_app.command("chatbot")
    def chatbot_command(
        questions: Path = typer.Option(..., help="Question JSONL (LLaVA-Med llava_med_eval_qa50_qa.jsonl)."),
        answers: Path = typer.Option(..., help="Model answers JSONL with question_id and text."),
        output: Path = typer.Option(..., "--output", "-o", help="Reviews JSONL to write."),
        summary: Path = typer.Option(None, help="Summary JSON (default: <output stem>.summary.json)."),
        model: str = typer.Option("openai/gpt-4o", help="Judge model id at the endpoint."),
        base_url: str = typer.Option(None, help="OpenAI-compatible endpoint of the judge."),
        concurrency: int = typer.Option(4, help="Requests in flight at once."),
        max_retries: int = typer.Option(6, help="Retries per request for 429, 5xx and network errors."),
        max_reasks: int = typer.Option(3, help="Re-asks when the first line is not two scores."),
        timeout: float = typer.Option(120.0, help="Seconds per request."),
        prompt: str = typer.Option("chatbot_judge", help="Judge instruction: prompt name or .txt file."),
        resume: bool = typer.Option(False, "--resume", help="Keep existing reviews, judge the rest."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing reviews file."),
        env_file: Path = typer.Option(None, help="A .env file with the API key (default: ./.env)."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    ) -> None:
        """Judge model answers against GPT-4 answers; print relative scores per category."""
        from rich.console import Console

        from exgra.eval.chatbot import ChatbotEvalOptions, evaluate_chatbot, print_summary
        from exgra.llm import LLMSettings

        settings = LLMSettings(
            model=model,
            base_url=base_url,
            concurrency=concurrency,
            max_retries=max_retries,
            max_reasks=max_reasks,
            timeout=timeout,
            temperature=0.0,  # the reference judges at temperature 0
        )
        options = ChatbotEvalOptions(
            questions_path=questions,
            answers_path=answers,
            output_path=output,
            summary_path=summary,
            settings=settings,
            prompt=prompt,
            resume=resume,
            overwrite=overwrite,
            env_file=env_file,
            show_progress=not no_progress,
        )
        print_summary(evaluate_chatbot(options, console=Console(stderr=True)), console=Console())
