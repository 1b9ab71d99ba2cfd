"""``exgra eval vqa-rad|slake|pathvqa|vqa``: batched, resumable, sharded answer generation for a VQA test set.

Answers are written in the reference schema (REFERENCE §7.1), one JSON object per line::

    {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}

so the reference scorer reads our files and ours reads the reference's.

Resume and sharding. Each process ``i`` of ``n`` appends its answers to ``<output>.part-<i>`` and flushes
(and fsyncs) after every batch, so a kill loses at most the batch in flight; a torn last line left by
a kill is detected and dropped when the file is opened again. A rerun collects the ids already answered
in the output and in every part file and answers only the rest. When all processes are done, the main
process merges everything in the order of the test JSON into ``<output>`` (temporary name, then
rename) and removes the part files. Within a run the questions are sorted by prompt length so a batch
holds prompts of similar length (less padding); the merge restores question order.

Beside the answers: ``<stem>.run.json`` (model, template, generation settings, seed, versions) and,
when the test JSON has answers, ``<stem>.metrics.json`` from :mod:`exgra.eval.scoring`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from exgra.choices import DtypeName, ImageAblation, PromptTokenization, ScorerName, TemplateName
from exgra.config import Section
from exgra.errors import DataError, ExgraError
from exgra.io import write_text_atomic

__all__ = [
    "AnswerShards",
    "VQAEvalConfig",
    "VQAEvalResult",
    "append_jsonl",
    "distributed_state",
    "progress_bar",
    "sidecar_path",
    "read_jsonl",
    "repair_torn_tail",
    "run_vqa_eval",
]

# Settings that change the answers: a resumed run must match them, or the file would mix two runs.
# Every setting that changes an answer; a resumed run must match the recorded one in all of them.
_RESUME_KEYS = (
    "model",
    "data",
    "images",
    "dataset",
    "template",
    "generation",
    "image_ablation",
    "dtype",
    "device",
    "batch_size",
    "prompt",
)


# --------------------------------------------------------------------------------------------------
# JSONL files that survive a kill
# --------------------------------------------------------------------------------------------------


def repair_torn_tail(path: Path) -> int:
    """Truncate ``path`` after its last newline; return how many bytes of a torn last line were dropped.

    Every line is written with its newline in one call, so text after the last newline is a line that a
    kill interrupted: it is incomplete by construction and its question is simply answered again.
    """
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as handle:
        # Read backwards in blocks until a newline is found (lines are short, usually one block).
        position = size
        block = 4096
        keep = 0
        while position > 0:
            start = max(0, position - block)
            handle.seek(start)
            chunk = handle.read(position - start)
            index = chunk.rfind(b"\n")
            if index >= 0:
                keep = start + index + 1
                break
            position = start
        if keep < size:
            handle.truncate(keep)
        return size - keep


def read_jsonl(path: Path, allow_torn_tail: bool = True) -> list[dict[str, Any]]:
    """Read a JSONL file of objects; a torn last line (no newline, not JSON) is ignored when allowed.

    Any other unreadable line is a :class:`DataError` naming the file and the line number.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    records: list[dict[str, Any]] = []
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        is_tail = number == len(lines)  # text after the last newline
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if is_tail and allow_torn_tail:
                continue
            raise DataError(f"{path} line {number} is not valid JSON: {exc}") from exc
        if is_tail and allow_torn_tail:
            # Complete JSON but no newline: the kill hit between the object and its newline; it will be
            # truncated on the next append, so do not count it as answered either.
            continue
        if not isinstance(record, dict):
            raise DataError(f"{path} line {number} must be a JSON object, found {type(record).__name__}")
        records.append(record)
    return records


def append_jsonl(handle: Any, records: Iterable[dict[str, Any]]) -> None:
    """Append records as JSON lines in one write, then flush and fsync (survives a kill or power loss)."""
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if not text:
        return
    handle.write(text)
    handle.flush()
    with contextlib.suppress(OSError):
        os.fsync(handle.fileno())


def _key(question_id: Any) -> str:
    return str(question_id)


class AnswerShards:
    """The output file of a run and the per-process part files beside it.

    ``<output>.part-<rank>`` holds what process ``rank`` answered so far; :meth:`merge` turns the output
    and all parts into one file in question order.
    """

    def __init__(self, output: str | Path, key_field: str = "question_id") -> None:
        self.output = Path(output)
        self.key_field = key_field

    def part_path(self, rank: int) -> Path:
        return self.output.with_name(f"{self.output.name}.part-{rank}")

    def part_paths(self) -> list[Path]:
        return sorted(self.output.parent.glob(f"{self.output.name}.part-*"))

    def has_unfinished_run(self) -> bool:
        return bool(self.part_paths())

    def load_done(self, include_output: bool = True) -> dict[str, dict[str, Any]]:
        """Records already written (output first, then parts), keyed by ``str(question id)``."""
        done: dict[str, dict[str, Any]] = {}
        sources = ([self.output] if include_output and self.output.exists() else []) + self.part_paths()
        for path in sources:
            # The merged output is written atomically, so its last line is complete even without a
            # newline (files from other tools); only part files can end in a torn line.
            for record in read_jsonl(path, allow_torn_tail=path != self.output):
                if self.key_field in record:
                    done.setdefault(_key(record[self.key_field]), record)
        return done

    @contextlib.contextmanager
    def open_part(self, rank: int) -> Iterator[Any]:
        """Open this process's part file for appending, after dropping a torn last line."""
        path = self.part_path(rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(path)
        with path.open("a", encoding="utf-8") as handle:
            yield handle

    def remove_parts(self) -> None:
        for path in self.part_paths():
            path.unlink(missing_ok=True)

    def merge(self, order: Sequence[Any], include_output: bool = True) -> int:
        """Write every known record whose id is in ``order`` to the output in that order; drop parts.

        Returns the number of records written. Records of ids not in ``order`` are dropped only from the
        merged file (the ids of the test JSON define the answers file).
        """
        done = self.load_done(include_output=include_output)
        lines = [
            json.dumps(done[_key(question_id)], ensure_ascii=False) + "\n"
            for question_id in order
            if _key(question_id) in done
        ]
        self.output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.output, "".join(lines))
        self.remove_parts()
        return len(lines)


# --------------------------------------------------------------------------------------------------
# The evaluation run
# --------------------------------------------------------------------------------------------------


class VQAEvalConfig(Section):
    """Settings of one ``exgra eval vqa-*`` run (every field is also a command-line option)."""

    model: Path = Field(description="directory of a saved exgra model")
    data: Path = Field(description="VQA test JSON (REFERENCE §4.4 records)")
    images: Path = Field(description="folder the records' image paths are relative to")
    output: Path = Field(description="answers JSONL to write")
    dataset: str = Field(
        "vqa", description="dataset name recorded in the outputs (vqa-rad, slake, pathvqa, vqa)"
    )
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int | None = Field(
        None, ge=1, description="default: 1024 (the reference's) under legacy/mistral_instruct, else 128"
    )
    template: TemplateName | None = Field(None, description="default: the model's own template")
    dtype: DtypeName = "auto"
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (with accelerate: each process's GPU)")
    prompt_tokenization: PromptTokenization = Field(
        "fast", description="fast = the reference's eval tokenizer; slow = its training-time tokenisation"
    )
    image_ablation: ImageAblation = "none"
    protocol: str = Field("exgra-med", description="evaluation protocol: prompt + decoding + scorer")
    seed: int = 2802
    limit: int | None = Field(None, ge=1, description="answer only the first N questions (smoke tests)")
    overwrite: bool = False
    resume: bool = False
    score: bool = True
    scorer: ScorerName | None = Field(
        None, description="a scorer variant of the exgra-med protocol (default: the protocol's scorer)"
    )
    candidates: Path | None = Field(None, description="candidate.json for the legacy open-accuracy metric")
    judge_model: str | None = Field(None, description="LLM judge of open answers (medevalkit protocol)")
    judge_base_url: str | None = Field(None, description="OpenAI-compatible endpoint of the judge")
    progress: bool = True


@dataclass
class VQAEvalResult:
    """What a run did: paths written, how many answers were generated now and found from before."""

    answers_path: Path
    run_info_path: Path
    num_questions: int
    num_generated: int
    num_resumed: int
    seconds: float
    metrics: dict[str, Any] | None = None
    metrics_path: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    process_index: int = 0
    num_processes: int = 1


def sidecar_path(output: Path, suffix: str) -> Path:
    """``answers.jsonl`` -> ``answers.<suffix>`` (run info, metrics) in the same folder."""
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(f"{stem}.{suffix}")


def distributed_state() -> tuple[int, int, Callable[[], None], Any]:
    """(rank, world size, barrier, device) from accelerate when launched with it; one process otherwise.

    ``accelerate launch`` and ``torchrun`` set ``WORLD_SIZE``; without a GPU the processes talk over
    gloo (accelerate's MULTI_CPU), so the same command shards on a CPU machine too.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, lambda: None, None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != world:
        raise ExgraError(
            f"WORLD_SIZE is {world} but accelerate set up {state.num_processes} process(es); "
            "launch with `accelerate launch -m exgra ...` or `torchrun ... -m exgra ...`"
        )
    return state.process_index, state.num_processes, state.wait_for_everyone, state.device


def _end_distributed(world: int, created: bool) -> None:
    """Tear down a process group this run created (a group left open can abort the interpreter's exit)."""
    import torch.distributed as dist

    if world > 1 and created and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _check_inputs(config: VQAEvalConfig) -> None:
    from exgra.outputs import check_not_inputs, describe_path

    for option, path, kind, missing in (
        ("--model", config.model, "folder", "model directory not found"),
        ("--data", config.data, "file", "test JSON not found"),
        ("--images", config.images, "folder", "image folder not found"),
    ):
        if not (path.is_dir() if kind == "folder" else path.is_file()):
            found = describe_path(path)
            if found == "nothing":
                raise DataError(f"{missing}: {path}")
            raise DataError(f"{option} {path} is {found}, not a {kind}")
    if config.output.exists() and config.output.is_dir():
        raise ExgraError(f"--output must be a file path, but {config.output} is a folder")
    outputs = {
        "--output": config.output,
        "the run settings": sidecar_path(config.output, "run.json"),
        "the metrics": sidecar_path(config.output, "metrics.json"),
    }
    check_not_inputs(outputs, {"--data": config.data, "--candidates": config.candidates})


def _run_info(config: VQAEvalConfig, template: str, settings: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers

    from exgra import __version__
    from exgra.eval.protocols import get_protocol

    return {
        "exgra_version": __version__,
        "model": str(config.model.resolve()),
        "data": str(config.data.resolve()),
        "images": str(config.images.resolve()),
        "dataset": config.dataset,
        "template": template,
        "generation": settings,
        "image_ablation": config.image_ablation,
        "dtype": config.dtype,
        "device": config.device,
        "batch_size": config.batch_size,
        "protocol": get_protocol(config.protocol).to_dict(),
        "prompt": get_protocol(config.protocol).prompt,
        "answer_text": "template.clean_answer(raw): stop string cut, assistant role prefix removed; "
        "metadata.raw_text keeps the reference's text when it differs",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _model_settings(generator: Any) -> dict[str, Any]:
    """How the model turned inputs into answers: recorded so two runs can be compared setting by setting."""
    bundle = generator.bundle
    processor = bundle.image_processor
    return {
        "dtype": str(generator.dtype).removeprefix("torch."),
        "eos_token_id": generator.eos_token_id,
        "pad_token_id": bundle.tokenizer.pad_token_id,
        "stop_strings": list(generator.stop_strings),
        "image_conversion": getattr(processor, "conversion", None),
        "image_aspect_ratio": getattr(processor, "aspect_ratio", None),
        # The reference's eval loaded AutoTokenizer with its default (fast); so does exgra at eval.
        "tokenizer": type(bundle.tokenizer).__name__ + (" (fast)" if bundle.tokenizer.is_fast else " (slow)"),
    }


def _check_resumable(info_path: Path, info: dict[str, Any]) -> None:
    """The resume rule (:mod:`exgra.outputs`): every answer-changing setting must match, by name; an
    unreadable run file is refused (it cannot prove the answers were made the same way)."""
    from exgra.outputs import check_resume_settings

    check_resume_settings(info_path, info, _RESUME_KEYS)


def _prepare_output(config: VQAEvalConfig, shards: AnswerShards, rank: int) -> bool:
    """Apply the overwrite/resume rules; return whether earlier answers are reused."""
    if config.overwrite:
        if rank == 0:
            shards.remove_parts()
        return False
    if config.output.exists() and not config.resume:
        raise ExgraError(
            f"{config.output} already exists; pass --resume to answer only the missing questions "
            "or --overwrite to replace it"
        )
    return True


def _load_questions(config: VQAEvalConfig) -> list[Any]:
    from exgra.data.records import load_vqa_records

    records = list(load_vqa_records(config.data))
    if not records:
        raise DataError(f"{config.data} contains no questions")
    if config.limit is not None:
        records = records[: config.limit]
    seen: set[str] = set()
    for record in records:
        key = _key(record.id)
        if key in seen:
            raise DataError(f"{config.data} has the question id {record.id!r} twice; ids must be unique")
        seen.add(key)
    return records


def _check_images(records: Sequence[Any], folder: Path) -> None:
    from exgra.data.records import safe_image_path

    missing = []
    for record in records:
        path = safe_image_path(folder, record.image)
        if not path.is_file():
            missing.append(str(record.image))
    if missing:
        raise DataError(
            f"{len(missing)} of {len(records)} images are missing under {folder}, e.g. {missing[0]}; "
            "check --images"
        )


def _batches(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def run_vqa_eval(config: VQAEvalConfig) -> VQAEvalResult:
    """Generate (or finish generating) answers for ``config.data``; merge, record and score them.

    Safe to call again after an interruption: answered ids are skipped. Launch it with
    ``accelerate launch -m exgra eval ...`` (or ``torchrun``) to shard the questions across processes.
    """
    from exgra.data.records import load_image, vqa_answer, vqa_question
    from exgra.eval.ablation import ablate_image, shuffled_images
    from exgra.eval.generate import AnswerGenerator, GenerationSettings, load_inference_model
    from exgra.eval.protocol_scoring import protocol_scorer
    from exgra.eval.protocols import ask, get_protocol

    started = time.perf_counter()
    protocol = get_protocol(config.protocol)
    protocol_scorer(protocol, config.scorer)  # an impossible combination fails before any work
    prompt_style = protocol.prompt
    _check_inputs(config)
    import torch.distributed as dist

    group_existed = dist.is_available() and dist.is_initialized()
    rank, world, barrier, state_device = distributed_state()
    shards = AnswerShards(config.output)
    reuse = _prepare_output(config, shards, rank)
    records = _load_questions(config)
    _check_images(records, config.images)

    device = state_device if (state_device is not None and config.device == "auto") else config.device
    bundle = load_inference_model(config.model, device=device, dtype=config.dtype)
    from exgra.data.templates import REFERENCE_TEMPLATES

    template_name = config.template or bundle.template
    max_new_tokens = config.max_new_tokens or (1024 if template_name in REFERENCE_TEMPLATES else 128)
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens, seed=config.seed, prompt_tokenization=config.prompt_tokenization
    )
    generator = AnswerGenerator(bundle, template=config.template, settings=settings)
    info = _run_info(config, generator.template_name, {**settings.to_dict(), **_model_settings(generator)})
    info_path = sidecar_path(config.output, "run.json")
    if reuse:
        _check_resumable(info_path, info)
    barrier()
    done = shards.load_done(include_output=reuse) if reuse else {}
    if rank == 0:
        info_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(info_path, json.dumps({**info, "num_processes": world}, indent=2) + "\n")
    barrier()  # everyone has read the same "done" set before anyone appends

    remaining = [r for r in records if _key(r.id) not in done]
    questions = {_key(r.id): ask(prompt_style, vqa_question(r), vqa_answer(r)) for r in remaining}
    # Under the shuffle control a question is shown another question's image (the same in every process).
    image_of = {_key(r.id): str(r.image) for r in records}
    if config.image_ablation == "shuffle":
        image_of = shuffled_images(image_of.items(), config.seed)
    lengths = generator.prompt_lengths([questions[_key(r.id)] for r in remaining]) if remaining else []
    order = sorted(range(len(remaining)), key=lambda i: (lengths[i], i))
    mine = [remaining[i] for i in order][rank::world]
    model_id = str(config.model)

    def load_batch(batch: list[Any]) -> Any:
        mode, seed = config.image_ablation, config.seed
        images = [
            ablate_image(load_image(config.images, image_of[_key(r.id)], None), mode, _key(r.id), seed)
            for r in batch
        ]
        return generator.preprocess(images)

    timings = {"generate_s": 0.0}
    batches = _batches(mine, config.batch_size)
    with (
        shards.open_part(rank) as handle,
        ThreadPoolExecutor(max_workers=1) as pool,
        progress_bar(config.progress and rank == 0, len(mine), f"answering {config.dataset}") as advance,
    ):
        # Images of the next batch load in a thread while the model generates the current one.
        pending: Future[Any] | None = pool.submit(load_batch, batches[0]) if batches else None
        for index, batch in enumerate(batches):
            assert pending is not None
            pixel_values = pending.result()
            pending = pool.submit(load_batch, batches[index + 1]) if index + 1 < len(batches) else None
            tick = time.perf_counter()
            answers = generator.generate([questions[_key(r.id)] for r in batch], pixel_values)
            timings["generate_s"] += time.perf_counter() - tick  # this process's generate calls
            lines = []
            for record, answer in zip(batch, answers, strict=True):
                metadata: dict[str, Any] = {"template": generator.template_name, "dataset": config.dataset}
                if config.image_ablation != "none":
                    metadata["image_ablation"] = config.image_ablation
                if answer.raw_text != answer.text:
                    metadata["raw_text"] = answer.raw_text
                lines.append(
                    {
                        "question_id": record.id,
                        "prompt": questions[_key(record.id)] + "\n<image>",
                        "text": answer.text,
                        "answer_id": uuid.uuid4().hex,
                        "model_id": model_id,
                        "metadata": metadata,
                    }
                )
            append_jsonl(handle, lines)
            advance(len(lines))

    barrier()
    result = VQAEvalResult(
        answers_path=config.output,
        run_info_path=info_path,
        num_questions=len(records),
        num_generated=len(remaining),  # by all processes together
        num_resumed=len(records) - len(remaining),
        seconds=0.0,
        timings=timings,
        process_index=rank,
        num_processes=world,
    )
    if rank == 0:
        written = shards.merge([r.id for r in records], include_output=reuse)
        if written != len(records):
            raise ExgraError(f"only {written} of {len(records)} answers were written to {config.output}")
        if config.score:
            result.metrics, result.metrics_path = _score(config, info)
    barrier()
    _end_distributed(world, created=not group_existed)
    result.seconds = time.perf_counter() - started
    return result


def _score(config: VQAEvalConfig, info: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    from exgra.eval.protocol_scoring import score_protocol

    judge = None
    if config.judge_model is not None:
        from exgra.eval.judge import judge_settings

        journal = sidecar_path(config.output, "judge.jsonl")
        judge = judge_settings(config.judge_model, config.judge_base_url, journal)
    report = score_protocol(
        config.data,
        config.output,
        config.protocol,
        candidates_path=config.candidates,
        scorer=config.scorer,
        judge=judge,
        allow_partial=config.limit is not None,  # --limit answers only the first N questions
    )
    metrics_path = sidecar_path(config.output, "metrics.json")
    payload = {**report.to_dict(), "run": info}
    write_text_atomic(metrics_path, json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
    return report.metrics, metrics_path


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, description: str) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda _count: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda count: progress.advance(task, count)
