"""Medical visual chatbot evaluation: an LLM judge compares model answers to GPT-4 answers (REFERENCE §7.4).

Questions are LLaVA-Med ``llava_med_eval_qa50_qa.jsonl`` records; answers are matched by
``question_id`` (the reference zips by position). The judge scores the reference answer (``s1``) and
the model answer (``s2``) from 1 to 10 on the first line of its reply. Per category (``all``, each
question ``type``, each ``domain`` flag): ``gpt4_score`` = mean s1, ``pred_score`` = mean s2 and
``relative_score`` = mean of s2/s1 × 100 (a mean of ratios, as the reference computes it).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from exgra.config import Section
from exgra.data.records import sha256_file
from exgra.errors import DataError, ExgraError
from exgra.io import check_output_file, read_jsonl, write_json_atomic
from exgra.llm import Credentials, LLMClient, LLMSettings, LLMStats, ReplyError, resolve_credentials
from exgra.llm.journal import Journal
from exgra.outputs import check_distinct_outputs, check_not_inputs, check_resume_settings, write_settings
from exgra.prompts import load_prompt

DOMAINS = ("chest_xray", "mri", "histology", "gross", "ct_scan")
_SCORES = re.compile(r"^\s*\**\s*(\d+(?:\.\d+)?)\s*(?:[,/]|\s)\s*(\d+(?:\.\d+)?)\s*\**\s*$")


class ChatbotEvalConfig(Section):
    """Everything ``exgra eval chatbot`` needs (validated); the judge runs at temperature 0 by default."""

    questions_path: Path
    answers_path: Path
    output_path: Path
    summary_path: Path | None = None
    settings: LLMSettings = Field(default_factory=lambda: LLMSettings(model="openai/gpt-4o", temperature=0.0))
    prompt: str = "chatbot_judge"
    system_prompt: str = "chatbot_judge_system"
    resume: bool = False
    overwrite: bool = False
    env_file: Path | None = None
    show_progress: bool = True


ChatbotEvalOptions = ChatbotEvalConfig  # the earlier name


@dataclass
class ChatbotEvalReport:
    summary: dict[str, Any]
    reviews_path: Path
    summary_path: Path
    failed_ids: list[str]
    stats: LLMStats


def match_answers(
    questions: list[dict[str, Any]], answers: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pair each question with its answer by ``question_id``; any mismatch is an error."""

    def index(rows: list[dict[str, Any]], what: str) -> dict[str, dict[str, Any]]:
        by_id: dict[str, dict[str, Any]] = {}
        for row in rows:
            key = str(row["question_id"])
            if key in by_id:
                raise DataError(f"question_id {key} appears twice in the {what}")
            by_id[key] = row
        return by_id

    question_by_id, answer_by_id = index(questions, "questions"), index(answers, "answers")
    missing = [k for k in question_by_id if k not in answer_by_id]
    extra = [k for k in answer_by_id if k not in question_by_id]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} questions have no answer (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} answers match no question (e.g. {', '.join(extra[:3])})")
        raise DataError("answers do not match the questions by question_id: " + "; ".join(parts))
    return [(question_by_id[k], answer_by_id[k]) for k in question_by_id]


def question_text(question: dict[str, Any]) -> str:
    # the reference cuts a fixed 8 characters (the image placeholder); remove the placeholder itself
    text = str(question.get("text", ""))
    return re.sub(r"\s*<image>\s*$", "", text).strip()


def build_judge_messages(
    question: dict[str, Any], answer: dict[str, Any], instruction: str, system_prompt: str
) -> list[dict[str, str]]:
    caption = str(question.get("fig_caption", "")).strip()
    label = str(question.get("fig_label", "")).strip()
    mention = question.get("in_text_mention") or ""
    if isinstance(mention, list):
        mention = " ".join(str(m.get("tokens", m)) if isinstance(m, dict) else str(m) for m in mention)
    context = f"{label}: {caption}" if label else caption
    if mention:
        context += f"\n{mention}"
    content = (
        f"[Context]\n{context}\n\n[Question]\n{question_text(question)}\n\n"
        f"[Assistant 1]\n{question.get('gpt4_answer', '')}\n\n[End of Assistant 1]\n\n"
        f"[Assistant 2]\n{answer.get('text', '')}\n\n[End of Assistant 2]\n\n"
        f"[System]\n{instruction.strip()}\n\n"
    )
    return [{"role": "system", "content": system_prompt.strip()}, {"role": "user", "content": content}]


def parse_scores(text: str) -> tuple[float, float]:
    """The two scores on the first line ("s1 s2"); raises :class:`ReplyError` otherwise."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    match = _SCORES.match(first)
    if not match:
        raise ReplyError(f"first line is not two scores: {first[:60]!r}")
    s1, s2 = float(match.group(1)), float(match.group(2))
    if not (1 <= s1 <= 10 and 1 <= s2 <= 10):
        raise ReplyError(f"scores {s1} {s2} are outside 1-10")
    return s1, s2


def categories(question: dict[str, Any]) -> list[str]:
    names = ["all"]
    if question.get("type"):
        names.append(str(question["type"]))
    domain = question.get("domain") or {}
    names.extend(name for name in DOMAINS if domain.get(name))
    return names


def summarize_reviews(reviews: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per category: n, gpt4_score (mean s1), pred_score (mean s2), relative_score (mean s2/s1 × 100)."""
    grouped: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for review in reviews:
        s1, s2 = review["scores"]
        for name in review["categories"]:
            grouped[name].append((s1, s2))
    order = ["all", "conversation", "description", *DOMAINS]
    names = sorted(grouped, key=lambda n: (order.index(n) if n in order else len(order), n))
    return {
        name: {
            "n": len(grouped[name]),
            "gpt4_score": sum(s1 for s1, _ in grouped[name]) / len(grouped[name]),
            "pred_score": sum(s2 for _, s2 in grouped[name]) / len(grouped[name]),
            "relative_score": 100.0 * sum(s2 / s1 for s1, s2 in grouped[name]) / len(grouped[name]),
        }
        for name in names
    }


def _existing_reviews(path: Path, wanted: set[str]) -> list[dict[str, Any]]:
    _, rows = Journal(path, with_header=False).read()
    kept = [r for r in rows if str(r.get("question_id")) in wanted and r.get("scores")]
    return list({str(r["question_id"]): r for r in kept}.values())  # last review per question


async def _judge(
    pending: list[tuple[dict[str, Any], dict[str, Any]]],
    options: ChatbotEvalConfig,
    credentials: Credentials,
    instruction: str,
    system_prompt: str,
    journal: Journal,
    stats: LLMStats,
    console: Console,
) -> tuple[list[dict[str, Any]], list[str]]:
    reviews: list[dict[str, Any]] = []
    failed: list[str] = []
    progress = Progress(
        TextColumn("[bold]judging"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not options.show_progress,
    )
    task = progress.add_task("judge", total=len(pending), detail="")

    def refresh(advance: int = 0) -> None:
        detail = f"failed {len(failed)} retries {stats.retries + stats.reasks} tokens {stats.total_tokens}"
        progress.update(task, advance=advance, detail=detail)

    async with LLMClient(options.settings, credentials, stats, on_retry=refresh) as client:

        async def one(question: dict[str, Any], answer: dict[str, Any]) -> None:
            messages = build_judge_messages(question, answer, instruction, system_prompt)
            result = await client.complete(messages, parse_scores)
            if result.ok and result.value is not None:
                review = {
                    "question_id": question["question_id"],
                    "categories": categories(question),
                    "scores": list(result.value),
                    "content": result.text,
                    "model": result.model,
                    "response_ids": result.response_ids,
                    "usage": result.usage(),
                }
                journal.append(review)
                reviews.append(review)
            else:
                failed.append(str(question["question_id"]))
                console.print(f"judge failed on {question['question_id']}: {result.error}", markup=False)
            refresh(advance=1)

        with progress:
            await asyncio.gather(*(one(q, a) for q, a in pending))
    return reviews, failed


def evaluate_chatbot(options: ChatbotEvalConfig, console: Console | None = None) -> ChatbotEvalReport:
    """Judge every answer, append reviews to ``output_path`` (JSONL), write a summary JSON."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    output = Path(options.output_path)
    summary_path = Path(options.summary_path or output.with_name(output.stem + ".summary.json"))
    settings_path = run_settings_path(output)
    continuing = options.resume or options.overwrite
    check_output_file(output, continuing, hint="pass --resume to continue it or --overwrite")
    check_output_file(summary_path, continuing)
    outputs = {"--output": output, "--summary": summary_path, "the run settings": settings_path}
    check_distinct_outputs(outputs)
    check_not_inputs(outputs, {"--questions": options.questions_path, "--answers": options.answers_path})
    pairs = match_answers(
        read_jsonl(options.questions_path, "questions file", required_key="question_id"),
        read_jsonl(options.answers_path, "answers file", required_key="question_id"),
    )
    instruction = load_prompt(options.prompt)
    system_prompt = load_prompt(options.system_prompt)
    wanted = {str(q["question_id"]) for q, _ in pairs}
    run_settings = {
        "judge_model": options.settings.model,
        "temperature": options.settings.temperature,
        "max_tokens": options.settings.max_tokens,
        "prompt_sha256": _digest(instruction),
        "system_prompt_sha256": _digest(system_prompt),
        "questions_sha256": sha256_file(options.questions_path),
        "answers_sha256": sha256_file(options.answers_path),
    }
    if options.resume and output.exists():
        # The resume rule: reviews by another judge, prompt or answers file must not be mixed in.
        check_resume_settings(settings_path, run_settings)
    done = _existing_reviews(output, wanted) if options.resume and output.exists() else []
    done_ids = {str(r["question_id"]) for r in done}
    pending = [(q, a) for q, a in pairs if str(q["question_id"]) not in done_ids]

    stats = LLMStats()
    # Before the reviews file is opened (and truncated by --overwrite): a missing key loses nothing.
    credentials = resolve_credentials(options.settings.base_url, options.env_file) if pending else None
    # the reviews JSONL is itself the journal: one line per judged question, appended and fsynced
    write_settings(settings_path, run_settings)
    journal = Journal(output, with_header=False)
    journal.open(None, resume=options.resume)
    try:
        new, failed = (
            asyncio.run(
                _judge(pending, options, credentials, instruction, system_prompt, journal, stats, console)
            )
            if credentials is not None
            else ([], [])
        )
    finally:
        journal.close()
    reviews = done + new
    if pending and not new and not done:
        raise ExgraError(
            f"the judge failed on all {len(pending)} questions, no summary written; check --base-url, "
            "the key and --timeout, then rerun with --resume"
        )
    summary = {
        "judge_model": options.settings.model,
        "prompt_sha256": _digest(system_prompt + instruction),
        "questions": len(pairs),
        "reviewed": len(reviews),
        "failed_question_ids": failed,
        "scores": summarize_reviews(reviews),
        "tokens": {"prompt": stats.prompt_tokens, "completion": stats.completion_tokens},
        "seconds": round(time.monotonic() - started, 2),
    }
    write_json_atomic(summary_path, summary)
    return ChatbotEvalReport(summary, output, summary_path, failed, stats)


def run_settings_path(output: Path) -> Path:
    """``reviews.jsonl`` -> ``reviews.run.json``: the settings a ``--resume`` must match."""
    return output.with_name(output.stem + ".run.json")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
