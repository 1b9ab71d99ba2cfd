"""An LLM judge for open VQA answers: is the model's answer the reference answer, in other words?

Any OpenAI-compatible endpoint, through :mod:`exgra.llm` (the client, retries, re-asks and journal of
caption extension and the chatbot judge). The judging prompt is ``prompts/vqa_judge.txt`` (or any
``.txt`` file), with ``{question}``, ``{gold_answer}`` and ``{answer}`` filled in; the judge replies
``{"correct": true|false}``. Every verdict is appended to a journal as it arrives, so an interrupted or
partly failed run is resumed by running it again: a question is judged again only when its question,
gold answer or reply changed. A journal written by another judge model or prompt is refused by name.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exgra.errors import ExgraError
from exgra.jsonl import Journal
from exgra.llm import LLMClient, LLMSettings, LLMStats, ReplyError, extract_json_object, resolve_credentials
from exgra.prompts import load_prompt

__all__ = [
    "JUDGE_KIND",
    "JudgeItem",
    "JudgeOutcome",
    "JudgeSettings",
    "judge_answers",
    "judge_settings",
    "parse_verdict",
]

JUDGE_KIND = "exgra-vqa-judge"


@dataclass
class JudgeSettings:
    """Where and how to judge; ``journal`` keeps one line per verdict (JSONL with a header line)."""

    llm: LLMSettings
    journal: Path
    prompt: str = "vqa_judge"
    env_file: Path | None = None
    overwrite: bool = False


def judge_settings(
    model: str,
    base_url: str | None,
    journal: Path,
    concurrency: int = 8,
    prompt: str = "vqa_judge",
    overwrite: bool = False,
) -> JudgeSettings:
    """Judge settings as the commands build them: temperature 0, the client's retry defaults."""
    llm = LLMSettings(model=model, base_url=base_url, concurrency=concurrency, temperature=0.0)
    return JudgeSettings(llm=llm, journal=journal, prompt=prompt, overwrite=overwrite)


@dataclass(frozen=True)
class JudgeItem:
    id: str
    question: str
    gold: str
    reply: str

    @property
    def key(self) -> str:
        # A verdict is reused only for the very same question, gold answer and reply.
        text = json.dumps([self.id, self.question, self.gold, self.reply], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass
class JudgeOutcome:
    """Verdicts by item id (only judged items), the ids the judge could not judge, and counts."""

    verdicts: dict[str, bool]
    failed: dict[str, str]
    model: str
    prompt_sha256: str
    judged_now: int = 0
    reused: int = 0
    stats: LLMStats = field(default_factory=LLMStats)

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt_sha256": self.prompt_sha256,
            "judged": len(self.verdicts),
            "judged_now": self.judged_now,
            "reused_from_journal": self.reused,
            "failed": len(self.failed),
            "failed_ids": sorted(self.failed)[:20],
            "tokens": {"prompt": self.stats.prompt_tokens, "completion": self.stats.completion_tokens},
        }


def parse_verdict(text: str) -> bool:
    """``{"correct": true|false}`` from the reply (a code fence or prose around it is fine)."""
    obj = extract_json_object(text)
    if obj is None or not isinstance(obj.get("correct"), bool):
        raise ReplyError('the reply is not a JSON object with a true/false "correct"')
    return obj["correct"]


def _messages(template: str, item: JudgeItem) -> list[dict[str, str]]:
    content = (
        template.replace("{question}", item.question)
        .replace("{gold_answer}", item.gold)
        .replace("{answer}", item.reply)
    )
    return [{"role": "user", "content": content}]


def _reusable(journal: Journal, header: dict[str, Any], overwrite: bool) -> dict[str, bool]:
    """Verdicts of an earlier run of the same judge and prompt, by item key."""
    old_header, entries = journal.read()
    if old_header is None or overwrite:
        return {}
    for name in ("kind", "judge_model", "prompt_sha256"):
        if old_header.get(name) != header[name]:
            raise ExgraError(
                f"the judge journal {journal.path} was written with another {name.replace('_', ' ')} "
                f"({old_header.get(name)!r}, now {header[name]!r}); pass --overwrite or another journal"
            )
    return {entry["key"]: entry["correct"] for entry in entries if "key" in entry and "correct" in entry}


async def _judge_pending(
    pending: list[JudgeItem], template: str, settings: JudgeSettings, journal: Journal, outcome: JudgeOutcome
) -> None:
    credentials = resolve_credentials(settings.llm.base_url, settings.env_file)
    async with LLMClient(settings.llm, credentials, outcome.stats) as client:

        async def one(item: JudgeItem) -> None:
            result = await client.complete(_messages(template, item), parse_verdict)
            if result.ok and result.value is not None:
                journal.append(
                    {
                        "key": item.key,
                        "question_id": item.id,
                        "correct": result.value,
                        "content": result.text,
                        "model": result.model,
                        "response_ids": result.response_ids,
                        "usage": result.usage(),
                    }
                )
                outcome.verdicts[item.id] = result.value
                outcome.judged_now += 1
            else:
                outcome.failed[item.id] = result.error or "no verdict"

        await asyncio.gather(*(one(item) for item in pending))


def judge_answers(items: list[JudgeItem], settings: JudgeSettings) -> JudgeOutcome:
    """Judge every item not already judged in the journal; return all verdicts.

    Concurrency, retries and re-asks follow ``settings.llm``; items that still fail are listed in
    ``outcome.failed`` (run again to retry them) and get no verdict.
    """
    template = load_prompt(settings.prompt)
    prompt_sha = hashlib.sha256(template.encode()).hexdigest()[:16]
    header = {"kind": JUDGE_KIND, "judge_model": settings.llm.model, "prompt_sha256": prompt_sha}
    journal = Journal(settings.journal)
    known = _reusable(journal, header, settings.overwrite)
    outcome = JudgeOutcome({}, {}, settings.llm.model, prompt_sha)
    pending = []
    for item in items:
        if item.key in known:
            outcome.verdicts[item.id] = known[item.key]
            outcome.reused += 1
        else:
            pending.append(item)
    if not pending:
        return outcome
    journal.open(header, resume=bool(known) or (journal.path.exists() and not settings.overwrite))
    try:
        asyncio.run(_judge_pending(pending, template, settings, journal, outcome))
    finally:
        journal.close()
    return outcome
