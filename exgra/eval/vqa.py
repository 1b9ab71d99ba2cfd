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

import json
import platform
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from exgra.choices import DtypeName, ImageAblation, PromptTokenization, ScorerName, TemplateName
from exgra.config import Section
from exgra.distributed import distributed_state
from exgra.distributed import end_distributed as _end_distributed
from exgra.errors import DataError, ExgraError
from exgra.io import write_text_atomic
from exgra.jsonl import AnswerShards, append_jsonl, repair_torn_tail
from exgra.jsonl import read_records as read_jsonl
from exgra.progress import progress_bar

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


def _key(question_id: Any) -> str:
    return str(question_id)


def sidecar_path(output: Path, suffix: str) -> Path:
    """``answers.jsonl`` -> ``answers.<suffix>`` (run info, metrics) in the same folder."""
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(f"{stem}.{suffix}")


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
    info = _run_info(config, generator.template_name, {**settings.to_dict(), **generator.run_settings()})
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
