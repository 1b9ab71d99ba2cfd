"""``exgra eval zero-shot``: multiple-choice classification on OmniMedVQA-format question files (§7.3).

Two protocols:

* ``likelihood`` (default, deterministic): every option is scored by the model's log-probability of the
  option's tokens after the prompt (the answer the model would have to write, after the assistant role
  of the template). ``mean`` (default) divides the sum by the option's token count, so long options are
  not penalised for their length; ``sum`` is the plain log-likelihood. The highest score wins (the
  first option on a tie). No text is generated, so there is nothing to parse.
* ``legacy`` reproduces the reference: sample an answer (temperature 0.7, 256 new tokens, seeded here),
  then pick the option whose text is closest to it by ``difflib.SequenceMatcher.ratio`` (strictly
  greater wins; no similarity at all counts as wrong).

Questions whose image is missing are not dropped: they are written with ``image_missing: true``,
counted as wrong in ``accuracy`` and listed per dataset (``accuracy_answered`` leaves them out).
"""

from __future__ import annotations

import difflib
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from exgra.choices import DtypeName, TemplateName, ZeroShotMethod
from exgra.config import Section
from exgra.errors import DataError, ExgraError
from exgra.eval.vqa import (
    AnswerShards,
    append_jsonl,
    distributed_state,
    progress_bar,
    sidecar_path,
)
from exgra.io import write_text_atomic

__all__ = [
    "OmniQuestion",
    "ZeroShotConfig",
    "ZeroShotResult",
    "accuracy_table",
    "closest_option",
    "load_omnimed_questions",
    "option_log_likelihoods",
    "run_zero_shot",
    "zero_shot_prompt",
]

_OPTION_KEY = re.compile(r"^option_([A-Z])$")


@dataclass(frozen=True)
class OmniQuestion:
    """One multiple-choice question: options in letter order, ``answer`` is the text of the right one."""

    question_id: str
    dataset: str
    question: str
    options: list[str]
    answer: str
    image: str


def _question_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise DataError(f"no .json question files in {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"question file not found: {path}")
    return files


def load_omnimed_questions(paths: Iterable[str | Path]) -> list[OmniQuestion]:
    """Read OmniMedVQA ``QA_information`` JSON files (or folders of them) into questions.

    Fields used: ``question``, ``option_A``.. (missing or empty options are skipped), ``gt_answer``,
    ``image_path`` and, when present, ``question_id`` and ``dataset`` (default: the file's name).
    """
    from exgra.data.records import read_json_list

    questions: list[OmniQuestion] = []
    seen: set[str] = set()
    for path in _question_files(paths):
        for index, item in enumerate(read_json_list(path)):
            where = f"{path} item {index}"
            if not isinstance(item, dict):
                raise DataError(f"{where} is not a JSON object")
            missing = [key for key in ("question", "gt_answer", "image_path") if not item.get(key)]
            if missing:
                raise DataError(f"{where} lacks {', '.join(missing)}")
            letters = sorted(m.group(1) for key in item if (m := _OPTION_KEY.match(key)))
            options = [str(item[f"option_{letter}"]).strip() for letter in letters]
            options = [option for option in options if option]
            if len(options) < 2:
                raise DataError(f"{where} has fewer than two options (option_A, option_B, ...)")
            answer = str(item["gt_answer"]).strip()
            if answer not in options:
                raise DataError(f"{where}: gt_answer {answer!r} is not one of its options {options}")
            dataset = str(item.get("dataset") or path.stem)
            question_id = str(item.get("question_id") or f"{path.stem}-{index}")
            if question_id in seen:
                question_id = f"{path.stem}-{question_id}"
            if question_id in seen:
                raise DataError(f"{where}: question id {question_id!r} appears twice")
            seen.add(question_id)
            questions.append(
                OmniQuestion(
                    question_id, dataset, str(item["question"]), options, answer, str(item["image_path"])
                )
            )
    if not questions:
        raise DataError("the question files contain no questions")
    return questions


def zero_shot_prompt(question: str, options: Sequence[str]) -> str:
    """The reference's question text (§7.3): options as a Python list, no space after the question."""
    return (
        f"{question}Here are {len(options)} candidate answers:{list(options)!s} Only return what you "
        "think is the correct answer from the candidate answers, do not return any other irrelevant "
        "text!\n<image>"
    )


def closest_option(prediction: str, options: Sequence[str]) -> int | None:
    """Index of the option most similar to ``prediction`` (difflib ratio; first wins; None if all 0)."""
    best, best_ratio = None, 0.0
    for index, option in enumerate(options):
        ratio = difflib.SequenceMatcher(None, prediction, option).ratio()
        if ratio > best_ratio:
            best, best_ratio = index, ratio
    return best


def _answer_prefix(template: Any, prompt: str) -> str:
    """Text the assistant writes before its answer: nothing if the prompt ends with the role already."""
    role = f"{template.assistant_role}:"
    return "" if prompt.rstrip().endswith(role) else role


def _common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    count = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        count += 1
    return count


@torch.inference_mode()
def option_log_likelihoods(
    generator: Any, questions: Sequence[str], pixel_values: torch.Tensor, options: Sequence[Sequence[str]]
) -> list[list[tuple[float, int]]]:
    """``(sum of log-probs, token count)`` of each option's tokens given its question's prompt and image.

    ``generator`` is an :class:`~exgra.eval.generate.AnswerGenerator` (model, tokenizer, template);
    ``pixel_values [Q, 3, S, S]`` has one image per question. The image is encoded once per question
    and its features are reused for all of the question's options, which run as one right-padded batch.
    The option tokens are those of ``prompt + prefix + " " + option`` after the longest common token
    prefix with ``prompt + prefix``, so a merge at the boundary cannot hide or duplicate a token.
    """
    if generator.template is None:  # a family with its own chat template: the family builds the inputs
        return _family_option_log_likelihoods(generator, questions, pixel_values, options)
    model, tokenizer = generator.model, generator.tokenizer
    rows: list[list[int]] = []
    spans: list[tuple[int, int]] = []
    owners: list[int] = []
    for index, (question, choices) in enumerate(zip(questions, options, strict=True)):
        prompt = generator.build_prompt(question)
        context = prompt + _answer_prefix(generator.template, prompt)
        context_ids = tokenizer(context)["input_ids"]
        for choice in choices:
            full_ids = tokenizer(f"{context} {choice}")["input_ids"]
            start = min(_common_prefix(context_ids, full_ids), len(full_ids) - 1)
            rows.append(full_ids)
            spans.append((max(start, 1), len(full_ids)))
            owners.append(index)
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row_index, row in enumerate(rows):
        input_ids[row_index, : len(row)] = torch.tensor(row)
        attention_mask[row_index, : len(row)] = 1
    device = generator.device
    features = model.encode_images(pixel_values.to(device=device, dtype=generator.dtype))  # [Q, N, D]
    features = features[torch.tensor(owners, device=features.device)]  # [R, N, D]
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    embeds = model.embed_inputs(input_ids, features)  # [R, L, D]
    logits = model(inputs_embeds=embeds, attention_mask=attention_mask).logits.float()  # [R, L, V]
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)  # position j predicts token j + 1
    token_log_probs = log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [R, L - 1]
    results: list[list[tuple[float, int]]] = [[] for _ in questions]
    for row_index, (start, end) in enumerate(spans):
        total = float(token_log_probs[row_index, start - 1 : end - 1].sum())
        results[owners[row_index]].append((total, end - start))
    return results


def _family_option_log_likelihoods(
    generator: Any, questions: Sequence[str], vision: Any, options: Sequence[Sequence[str]]
) -> list[list[tuple[float, int]]]:
    """:func:`option_log_likelihoods` for chat-template families: one left-padded row per option, with
    the question's image selected by the family; an option's tokens are the last tokens of its row."""
    family, bundle, tokenizer = generator.family, generator.bundle, generator.tokenizer
    from exgra.eval.generate import vision_inputs

    vision = vision_inputs(vision)
    texts, counts, owners = [], [], []
    for index, (question, choices) in enumerate(zip(questions, options, strict=True)):
        context = generator.build_prompt(question)
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        for choice in choices:
            full_ids = tokenizer(f"{context} {choice}", add_special_tokens=False)["input_ids"]
            start = min(_common_prefix(context_ids, full_ids), len(full_ids) - 1)
            texts.append(f"{context} {choice}")
            counts.append(len(full_ids) - start)
            owners.append(index)
    inputs = family.generation_inputs(bundle, texts, family.select_images(vision, owners))
    logits = generator.model(**inputs).logits.float()  # [R, L, V]
    input_ids = inputs["input_ids"]
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    token_log_probs = log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [R, L - 1]
    results: list[list[tuple[float, int]]] = [[] for _ in questions]
    for row, (count, owner) in enumerate(zip(counts, owners, strict=True)):
        # Left padding: every row ends at the last position, so its option is the last `count` tokens.
        results[owner].append((float(token_log_probs[row, -count:].sum()), count))
    return results


class ZeroShotConfig(Section):
    """Settings of one ``exgra eval zero-shot`` run."""

    model: Path = Field(description="directory of a saved exgra model")
    data: list[Path] = Field(description="OmniMedVQA QA JSON files, or folders of them")
    images: Path = Field(description="OmniMedVQA root folder (image_path is relative to it)")
    output: Path = Field(description="predictions JSONL; <stem>.results.json is written beside it")
    method: ZeroShotMethod = "likelihood"
    length_normalization: Literal["mean", "sum"] = "mean"
    batch_size: int = Field(8, ge=1, description="questions per forward (likelihood) or generate call")
    template: TemplateName | None = None
    dtype: DtypeName = "auto"
    device: str = "auto"
    seed: int = 2802
    temperature: float = Field(0.7, gt=0, description="legacy sampling temperature")
    max_new_tokens: int = Field(256, ge=1, description="legacy answer length")
    limit: int | None = Field(None, ge=1)
    overwrite: bool = False
    resume: bool = False
    progress: bool = True


@dataclass
class ZeroShotResult:
    """Per-dataset accuracy rows (plus an ``all`` row) and the files written."""

    rows: list[dict[str, Any]]
    predictions_path: Path
    results_path: Path
    seconds: float
    num_generated: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def accuracy_table(predictions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-dataset rows: questions, missing images, correct, accuracy (missing = wrong), accuracy answered."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in predictions:
        groups.setdefault(str(record["dataset"]), []).append(record)
    rows = []
    named = sorted(groups.items())
    if len(named) > 1:
        named.append(("all", list(predictions)))
    for dataset, records in named:
        total = len(records)
        missing = sum(bool(r.get("image_missing")) for r in records)
        correct = sum(bool(r.get("is_correct")) for r in records)
        answered = total - missing
        rows.append(
            {
                "dataset": dataset,
                "questions": total,
                "missing_images": missing,
                "correct": correct,
                "accuracy": 100.0 * correct / total if total else None,
                "accuracy_answered": 100.0 * correct / answered if answered else None,
            }
        )
    return rows


def run_zero_shot(config: ZeroShotConfig) -> ZeroShotResult:
    """Classify every question (resumable: answered ids in the output are kept); write predictions + table."""
    from exgra.data.records import load_image, safe_image_path
    from exgra.eval.generate import AnswerGenerator, GenerationSettings, load_inference_model
    from exgra.outputs import check_not_inputs, check_resume_settings, describe_path, write_settings

    started = time.perf_counter()
    for option, path in (("--model", config.model), ("--images", config.images)):
        if path.exists() and not path.is_dir():
            raise DataError(f"{option} {path} is {describe_path(path)}, not a folder")
    if not config.model.is_dir():
        raise ExgraError(f"model directory not found: {config.model}")
    if not config.images.is_dir():
        raise DataError(f"image folder not found: {config.images}")
    settings_path = sidecar_path(config.output, "run.json")
    outputs = {"--output": config.output, "the results": sidecar_path(config.output, "results.json")}
    check_not_inputs({**outputs, "the run settings": settings_path}, {f"--data {p}": p for p in config.data})
    questions = load_omnimed_questions(config.data)
    if config.limit is not None:
        questions = questions[: config.limit]
    shards = AnswerShards(config.output)
    if config.overwrite:
        shards.remove_parts()
    elif config.output.exists() and not config.resume:
        raise ExgraError(
            f"{config.output} already exists; pass --resume to classify only the missing questions "
            "or --overwrite to replace it"
        )
    reuse = not config.overwrite
    _rank, world, _barrier, _device = distributed_state()
    if world > 1:
        raise ExgraError("exgra eval zero-shot runs in one process; launch it without accelerate/torchrun")

    legacy = config.method == "legacy"
    settings = GenerationSettings(
        max_new_tokens=config.max_new_tokens,
        do_sample=legacy,
        temperature=config.temperature,
        seed=config.seed,
    )
    bundle = load_inference_model(config.model, device=config.device, dtype=config.dtype)
    generator = AnswerGenerator(bundle, template=config.template, settings=settings)
    info = {
        "method": config.method,
        "length_normalization": None if legacy else config.length_normalization,
        "template": generator.template_name,
        "generation": settings.to_dict() if legacy else None,
        "model_settings": generator.run_settings(),
        "model": str(config.model.resolve()),
        "data": [str(path.resolve()) for path in config.data],
        "images": str(config.images.resolve()),
        "seed": config.seed,
        "dtype": config.dtype,
        "device": config.device,
        "batch_size": config.batch_size,
    }
    if reuse and (config.output.exists() or shards.has_unfinished_run()):
        # The resume rule: one answers file never mixes two protocols (e.g. another --method).
        check_resume_settings(settings_path, info)
    write_settings(settings_path, info)
    from exgra import __version__

    info["exgra_version"] = __version__
    done = shards.load_done(include_output=reuse) if reuse else {}
    remaining = [q for q in questions if q.question_id not in done]
    missing = [q for q in remaining if not safe_image_path(config.images, q.image).is_file()]
    present = [q for q in remaining if safe_image_path(config.images, q.image).is_file()]
    generated = 0

    def record_for(question: OmniQuestion, **values: Any) -> dict[str, Any]:
        return {
            "question_id": question.question_id,
            "dataset": question.dataset,
            "question": question.question,
            "options": question.options,
            "gt_answer": question.answer,
            "image_path": question.image,
            **values,
        }

    with shards.open_part(0) as handle, progress_bar(config.progress, len(remaining), "zero-shot") as advance:
        if missing:
            lines = [record_for(q, prediction=None, is_correct=False, image_missing=True) for q in missing]
            append_jsonl(handle, lines)
            advance(len(lines))
        for start in range(0, len(present), config.batch_size):
            batch = present[start : start + config.batch_size]
            prompts = [zero_shot_prompt(q.question, q.options) for q in batch]
            pixel_values = generator.preprocess([load_image(config.images, q.image, None) for q in batch])
            lines = []
            if legacy:
                answers = generator.generate(prompts, pixel_values)
                for question, answer in zip(batch, answers, strict=True):
                    choice = closest_option(answer.text, question.options)
                    prediction = None if choice is None else question.options[choice]
                    lines.append(
                        record_for(
                            question,
                            prediction=prediction,
                            model_text=answer.text,
                            is_correct=prediction == question.answer,
                            image_missing=False,
                        )
                    )
            else:
                scores = option_log_likelihoods(generator, prompts, pixel_values, [q.options for q in batch])
                for question, option_scores in zip(batch, scores, strict=True):
                    values = [
                        total / count if config.length_normalization == "mean" else total
                        for total, count in option_scores
                    ]
                    best = max(range(len(values)), key=lambda i: (values[i], -i))
                    prediction = question.options[best]
                    lines.append(
                        record_for(
                            question,
                            prediction=prediction,
                            option_scores=values,
                            is_correct=prediction == question.answer,
                            image_missing=False,
                        )
                    )
            append_jsonl(handle, lines)
            generated += len(lines)
            advance(len(lines))

    shards.merge([q.question_id for q in questions], include_output=reuse)
    from exgra.eval.vqa import read_jsonl

    predictions = read_jsonl(config.output)
    rows = accuracy_table(predictions)
    results_path = sidecar_path(config.output, "results.json")
    write_text_atomic(
        results_path, json.dumps({"run": info, "accuracy": rows}, indent=2, ensure_ascii=False) + "\n"
    )
    return ZeroShotResult(rows, config.output, results_path, time.perf_counter() - started, generated)
