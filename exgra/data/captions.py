"""Extended captions: ask an LLM for a longer answer per question/answer pair (REFERENCE §5).

One request per pair, as the reference does; the reply's JSON ``revision`` becomes the extended answer.
Every finished record is appended to a journal beside the output (``OUT.json.journal.jsonl``), so a
killed run resumes with nothing lost or duplicated. The final output is the training file: every input
record with its ``conversations`` untouched and ``conversations_long`` added.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from exgra.choices import OnFailure
from exgra.config import Section
from exgra.errors import DataError, ExgraError
from exgra.io import check_output_file, read_json, write_json_atomic
from exgra.llm import (
    Credentials,
    LLMClient,
    LLMSettings,
    LLMStats,
    ReplyError,
    extract_json_object,
    resolve_credentials,
)
from exgra.llm.journal import Journal
from exgra.outputs import check_not_inputs, compare_settings
from exgra.prompts import load_prompt

CONVERSATION_KEYS = ("conversations", "conversatons")  # the reference's data has the typo
JOURNAL_KIND = "exgra-extend-captions"


class ExtendCaptionsConfig(Section):
    """Everything ``exgra extend-captions`` needs (validated); Python users build it and call
    :func:`extend_captions`."""

    input_path: Path
    output_path: Path
    settings: LLMSettings = Field(default_factory=LLMSettings)
    prompt: str = "extend_caption"
    on_failure: OnFailure = "skip"
    resume: bool = False
    overwrite: bool = False
    limit: int | None = Field(None, ge=1)
    dry_run: bool = False
    env_file: Path | None = None
    show_progress: bool = True


ExtendCaptionsOptions = ExtendCaptionsConfig  # the earlier name


@dataclass
class ExtendCaptionsReport:
    records: int
    extended: int = 0
    failed: int = 0
    resumed: int = 0
    without_conversations: int = 0
    written: int = 0
    failed_ids: list[str] = field(default_factory=list)
    stats: LLMStats = field(default_factory=LLMStats)
    seconds: float = 0.0
    output_path: Path | None = None
    journal_path: Path | None = None


@dataclass
class DryRunEstimate:
    records: int
    requests: int
    prompt_tokens: int
    completion_tokens: int


def journal_path_for(output_path: str | Path) -> Path:
    output_path = Path(output_path)
    return output_path.with_name(output_path.name + ".journal.jsonl")


def load_caption_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a LLaVA-Med-style JSON list of records."""
    path = Path(path)
    records = read_json(path, "input file")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path} must hold a JSON list of records (objects)")
    return records


def conversation_turns(record: dict[str, Any]) -> list[dict[str, Any]] | None:
    for key in CONVERSATION_KEYS:
        turns = record.get(key)
        if isinstance(turns, list) and turns:
            return turns
    return None


def qa_pairs(turns: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    """(answer turn index, question, answer) for each pair: even turns ask, odd turns answer (reference)."""
    return [
        (index, str(turns[index - 1].get("value", "")), str(turns[index].get("value", "")))
        for index in range(1, len(turns), 2)
    ]


def build_messages(system_prompt: str, question: str, answer: str) -> list[dict[str, str]]:
    """The reference's message: the prompt as system, ``{"instruction", "answer"}`` as JSON user text."""
    user = json.dumps({"instruction": question, "answer": answer}, ensure_ascii=False)
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


def parse_revision(text: str) -> str:
    """The extended answer in a reply; raises :class:`ReplyError` when there is none to take."""
    obj = extract_json_object(text)
    if obj is None:
        raise ReplyError("reply is not a JSON object")
    revision = obj.get("revision")
    if not isinstance(revision, str) or not revision.strip():
        raise ReplyError("reply has no non-empty 'revision' string")
    return " ".join(revision.split())  # the prompt asks for continuous text without line breaks


def record_hash(turns: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(turns, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _approx_tokens(text: str) -> int:
    # ~4 characters per token for English text with GPT-style tokenizers; an estimate, as labelled.
    return math.ceil(len(text) / 4)


def estimate_requests(
    records: list[dict[str, Any]], system_prompt: str, skip: set[int] | None = None
) -> DryRunEstimate:
    """Requests and approximate tokens a run would use, without sending anything."""
    skip = skip or set()
    estimate = DryRunEstimate(0, 0, 0, 0)
    for index, record in enumerate(records):
        turns = conversation_turns(record)
        if turns is None or index in skip:
            continue
        estimate.records += 1
        for _, question, answer in qa_pairs(turns):
            estimate.requests += 1
            messages = build_messages(system_prompt, question, answer)
            estimate.prompt_tokens += sum(_approx_tokens(m["content"]) + 4 for m in messages)
            # the revision is at most twice the answer, plus a short JSON critique
            estimate.completion_tokens += 2 * _approx_tokens(answer) + 60
    return estimate


def merge_extended(
    record: dict[str, Any], extended: dict[int, str] | None, on_failure: str
) -> dict[str, Any] | None:
    """The training record: the input untouched plus ``conversations_long`` (None to leave it out)."""
    turns = conversation_turns(record)
    if turns is None:
        return None
    if extended is None:
        if on_failure == "skip":
            return None
        extended = {}
    long_turns = copy.deepcopy(turns)
    for index, text in extended.items():
        long_turns[int(index)]["value"] = text
    merged = dict(record)
    merged["conversations_long"] = long_turns
    return merged


def _input_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Journal-header settings a resumed run must share with the run that wrote the journal.
RESUME_KEYS = ("input_sha256", "prompt_sha256", "model")


def _check_paths(options: ExtendCaptionsConfig, journal: Path) -> None:
    if options.input_path.is_dir():
        raise ExgraError(f"INPUT {options.input_path} is a folder, not a JSON file")
    # The output is checked even for a dry run: it tells the user now, not after the paid run.
    check_output_file(
        options.output_path, options.overwrite or options.resume, hint="pass --resume or --overwrite"
    )
    check_not_inputs({"--output": options.output_path, "the journal": journal}, {"INPUT": options.input_path})
    if options.resume or options.dry_run:
        return
    if journal.exists() and not options.overwrite:
        raise ExgraError(
            f"a journal from an earlier run exists ({journal}): pass --resume to continue it "
            "or --overwrite to start over"
        )


def _finished_entries(
    journal: Journal, header: dict[str, Any], records: list[dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """Entries of an earlier run, last one per record, checked against the current input."""
    old_header, entries = journal.read()
    if old_header is None:
        return {}
    if old_header.get("kind") != JOURNAL_KIND:
        raise DataError(f"{journal.path} is not an extend-captions journal")
    if old_header.get("input_sha256") != header["input_sha256"]:
        raise DataError(
            f"journal {journal.path} was written for a different input file; "
            "use another --output or --overwrite to start over"
        )
    # The resume rule (exgra.outputs): the journal header records the run's settings; compare by name.
    compare_settings(old_header, header, RESUME_KEYS, journal.path)
    finished: dict[int, dict[str, Any]] = {}
    for entry in entries:
        index = entry.get("index")
        if not isinstance(index, int) or not 0 <= index < len(records):
            raise DataError(f"journal {journal.path} names record index {index!r}, not in the input")
        finished[index] = entry
    return finished


async def _run(
    options: ExtendCaptionsConfig,
    records: list[dict[str, Any]],
    pending: list[int],
    system_prompt: str,
    credentials: Credentials,
    journal: Journal,
    report: ExtendCaptionsReport,
    console: Console,
) -> dict[int, dict[str, Any]]:
    entries: dict[int, dict[str, Any]] = {}
    progress = Progress(
        TextColumn("[bold]extend-captions"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not options.show_progress,
        transient=False,
    )
    task = progress.add_task("records", total=len(pending), detail="")
    stats = report.stats

    def refresh(advance: int = 0) -> None:
        detail = (
            f"requests ok {stats.succeeded} failed {stats.failed} retries {stats.retries + stats.reasks} "
            f"tokens {stats.total_tokens}"
        )
        progress.update(task, advance=advance, detail=detail)

    async with LLMClient(options.settings, credentials, stats, on_retry=refresh) as client:
        # bounds the records in flight (each holds its pairs' requests); requests are bounded inside
        record_slots = asyncio.Semaphore(max(2 * options.settings.concurrency, 1))

        async def one_record(index: int) -> None:
            async with record_slots:
                turns = conversation_turns(records[index])
                assert turns is not None
                pairs = qa_pairs(turns)
                results = await asyncio.gather(
                    *(
                        client.complete(build_messages(system_prompt, q, a), parse_revision)
                        for _, q, a in pairs
                    )
                )
                failed = [r for r in results if not r.ok]
                entry: dict[str, Any] = {
                    "index": index,
                    "id": records[index].get("id"),
                    "record_hash": record_hash(turns),
                    "status": "failed" if failed else "ok",
                    "model": next((r.model for r in results if r.model), options.settings.model),
                    "response_ids": [rid for r in results for rid in r.response_ids],
                    "usage": {
                        "prompt_tokens": sum(r.prompt_tokens for r in results),
                        "completion_tokens": sum(r.completion_tokens for r in results),
                    },
                }
                if failed:
                    entry["error"] = failed[0].error
                else:
                    entry["extended"] = {
                        str(turn): r.value for (turn, _, _), r in zip(pairs, results, strict=True)
                    }
                journal.append(entry)
                entries[index] = entry
                refresh(advance=1)

        with progress:
            await asyncio.gather(*(one_record(index) for index in pending))
    return entries


def extend_captions(options: ExtendCaptionsConfig, console: Console | None = None) -> ExtendCaptionsReport:
    """Extend every answer of ``options.input_path`` and write the training file to ``output_path``."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    journal_path = journal_path_for(options.output_path)
    system_prompt = load_prompt(options.prompt)
    records = load_caption_records(options.input_path)
    _check_paths(options, journal_path)
    if options.limit is not None:
        records = records[: options.limit]
    header = {
        "kind": JOURNAL_KIND,
        "version": 1,
        "input": str(options.input_path),
        "input_sha256": _input_digest(options.input_path),
        "prompt_sha256": hashlib.sha256(system_prompt.encode()).hexdigest()[:16],
        "model": options.settings.model,
    }
    journal = Journal(journal_path)
    finished = _finished_entries(journal, header, records) if options.resume else {}
    for index, entry in finished.items():
        turns = conversation_turns(records[index])
        if turns is None or entry.get("record_hash") != record_hash(turns):
            raise DataError(f"journal {journal_path} does not match record {index} of the input")

    report = ExtendCaptionsReport(records=len(records), journal_path=journal_path)
    usable = [i for i, r in enumerate(records) if conversation_turns(r) is not None]
    report.without_conversations = len(records) - len(usable)
    done = {i for i, e in finished.items() if e.get("status") == "ok"}
    report.resumed = len(done)
    pending = [i for i in usable if i not in done]  # failed records of an earlier run are tried again

    if options.dry_run:
        estimate = estimate_requests(records, system_prompt, skip=done)
        report.stats.requests = estimate.requests
        report.stats.prompt_tokens = estimate.prompt_tokens
        report.stats.completion_tokens = estimate.completion_tokens
        report.seconds = time.monotonic() - started
        return report

    # Before the journal is opened (and truncated by --overwrite): a missing key loses nothing.
    credentials = resolve_credentials(options.settings.base_url, options.env_file) if pending else None
    journal.open(header, resume=options.resume)
    try:
        new_entries = asyncio.run(
            _run(options, records, pending, system_prompt, credentials, journal, report, console)
            if credentials is not None
            else _noop()
        )
    finally:
        journal.close()
    finished.update(new_entries)
    _refuse_total_failure(finished, usable, pending, journal_path)

    output: list[dict[str, Any]] = []
    for index in usable:
        entry = finished.get(index)
        ok = entry is not None and entry.get("status") == "ok"
        if ok:
            report.extended += 1
        else:
            report.failed += 1
            report.failed_ids.append(str(records[index].get("id", f"#{index}")))
        merged = merge_extended(
            records[index],
            {int(k): v for k, v in entry["extended"].items()} if ok else None,
            options.on_failure,
        )
        if merged is not None:
            output.append(merged)
    write_json_atomic(options.output_path, output)
    report.written = len(output)
    report.output_path = options.output_path
    report.seconds = time.monotonic() - started
    return report


def _refuse_total_failure(
    finished: dict[int, dict[str, Any]], usable: list[int], pending: list[int], journal: Path
) -> None:
    """A run in which every request failed is a failure, not an empty training file (issue #12.7)."""
    if not pending or any(finished.get(index, {}).get("status") == "ok" for index in usable):
        return
    error = next((e.get("error") for e in finished.values() if e.get("error")), "no reply")
    raise ExgraError(
        f"all {len(pending)} records failed, nothing was written (first error: {error}); check --base-url, "
        f"the key and --timeout, then rerun with --resume (the journal {journal} keeps the attempts)"
    )


async def _noop() -> dict[int, dict[str, Any]]:
    return {}
