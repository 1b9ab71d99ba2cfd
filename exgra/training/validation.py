"""Fine-tuning model selection: generate answers for the validation split, score them, keep the best.

The reference's selection never triggers (REFERENCE §3.3): here every ``train.eval_every`` steps the
model answers the validation questions greedily (batched, left-padded, cut at the template's stop
string: :class:`exgra.eval.generate.AnswerGenerator`), the answers are scored with
:func:`exgra.eval.scoring.score_items` and, when ``train.metric_for_best`` improves, the model is
written to ``<output_dir>/best/`` with its scores.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from exgra.errors import DataError

__all__ = ["Validator", "selection_metrics"]


def selection_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The three selection numbers (percent) from a scorer's metrics: open recall, closed accuracy and
    their mean (the reference's ``average``); a missing half counts as the other one."""
    open_recall = metrics.get("recall")
    closed = metrics.get("closed_accuracy")
    present = [value for value in (open_recall, closed) if value is not None]
    average = sum(present) / len(present) if present else 0.0
    return {
        "open_recall": float(open_recall) if open_recall is not None else 0.0,
        "closed_accuracy": float(closed) if closed is not None else 0.0,
        "average": float(average),
    }


class Validator:
    """Runs validation on the main process and shares the scores with every process."""

    def __init__(self, config: Any, bundle: Any, accelerator: Any, output_dir: Path) -> None:
        from exgra.data.records import load_vqa_records

        self.config = config
        self.bundle = bundle
        self.accelerator = accelerator
        self.output_dir = output_dir
        self.records = load_vqa_records(config.data.val_json)
        if config.train.eval_max_items:
            self.records = self.records[: config.train.eval_max_items]
        if not self.records:
            raise DataError(f"{config.data.val_json} holds no validation records")

    def _answers(self, model: Any) -> list[tuple[str, str, str, str, str]]:
        from exgra.data.records import load_image, vqa_answer, vqa_question
        from exgra.eval.generate import AnswerGenerator, GenerationSettings

        bundle = dataclasses.replace(self.bundle, model=model)
        settings = GenerationSettings(max_new_tokens=self.config.train.eval_max_new_tokens)
        generator = AnswerGenerator(bundle, settings=settings)
        items = []
        size = self.config.train.eval_batch_size
        for start in range(0, len(self.records), size):
            chunk = self.records[start : start + size]
            images = [load_image(self.config.data.image_folder, record.image, None) for record in chunk]
            answers = generator.answer([vqa_question(r) for r in chunk], images)
            for record, answer in zip(chunk, answers, strict=True):
                items.append(
                    (answer.text, vqa_answer(record), record.answer_type, vqa_question(record), record.id)
                )
        return items

    def evaluate(self, step: int) -> dict[str, float]:
        """Scores of the current model (every process gets the main process's numbers)."""
        from accelerate.utils import broadcast_object_list

        from exgra.eval.scoring import ScoreItem, score_items

        scores: list[Any] = [None]
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self._module).model
            was_training = model.training
            model.eval()
            items = self._answers(model)
            model.train(was_training)
            metrics = score_items([ScoreItem(*item) for item in items], scorer="legacy")
            scores[0] = selection_metrics(metrics)
            path = self.output_dir / "validation" / f"step-{step:06d}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = [
                json.dumps({"id": i[4], "prediction": i[0], "answer": i[1], "answer_type": i[2]})
                for i in items
            ]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if self.accelerator.num_processes > 1:
            broadcast_object_list(scores, from_process=0)
        return scores[0]

    def attach(self, module: Any) -> None:
        self._module = module

    def save_best(self, module: Any, step: int, scores: dict[str, float]) -> None:
        from exgra.training.loop import exportable_module, save_model_dir

        export = exportable_module(self.accelerator, module, self.config)
        if self.accelerator.is_main_process:
            best = self.output_dir / "best"
            save_model_dir(export, self.bundle, best)
            payload = {"step": step, **scores, "metric_for_best": self.config.train.metric_for_best}
            (best / "validation_metrics.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
        self.accelerator.wait_for_everyone()
