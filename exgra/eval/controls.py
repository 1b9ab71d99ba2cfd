"""Image reliance: the same questions with the real image and with controls that remove its information.

``exgra eval ... --controls blank,noise,shuffle`` answers the test set once per control in the same job
(``blank``: mid-grey; ``noise``: seeded uniform noise; ``shuffle``: each question is shown another
question's image, seeded) into ``<stem>.control-<name>.jsonl`` beside the answers, then writes
``<stem>.reliance.json`` / ``.reliance.md``: per question type and overall, the protocol's score with
the real image, with each control, the drop, and the share of answers that stay the same when the
image is replaced. A model that does not look at the image keeps every answer (100 % unchanged, drop
0); one that reads the image changes answers and loses accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exgra.errors import ExgraError
from exgra.io import write_json_atomic, write_text_atomic

__all__ = [
    "CONTROLS",
    "RelianceReport",
    "control_output",
    "parse_controls",
    "reliance_report",
    "run_controls",
]

CONTROLS: tuple[str, ...] = ("blank", "noise", "shuffle")
GROUPS: tuple[str, ...] = ("all", "OPEN", "CLOSED")


def parse_controls(text: str | Sequence[str] | None) -> list[str]:
    """``"blank,noise"`` -> ``["blank", "noise"]``; an unknown or repeated name is an error."""
    if text is None:
        return []
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = [part.strip() for part in parts if part.strip()]
    unknown = [name for name in names if name not in CONTROLS]
    if unknown:
        raise ExgraError(f"unknown control {unknown[0]!r}; choose from {', '.join(CONTROLS)}")
    if len(set(names)) != len(names):
        raise ExgraError(f"--controls names a control twice: {text}")
    return names


def control_output(output: Path, control: str) -> Path:
    """``answers.jsonl`` -> ``answers.control-<control>.jsonl`` beside it."""
    from exgra.eval.vqa import sidecar_path

    return sidecar_path(Path(output), f"control-{control}.jsonl")


@dataclass
class RelianceReport:
    data: dict[str, Any]
    json_path: Path | None = None
    markdown_path: Path | None = None

    def rows(self) -> list[list[str]]:
        """Table rows: group, questions, control, score real, score control, drop, unchanged."""
        rows = []
        for group, entry in self.data["groups"].items():
            for control, values in entry["controls"].items():
                rows.append(
                    [
                        group,
                        str(entry["n"]),
                        control,
                        _fmt(entry["real"]),
                        _fmt(values["score"]),
                        _fmt(values["drop"]),
                        _fmt(values["unchanged"]),
                    ]
                )
        return rows

    header = ["questions", "n", "control", "real image %", "control %", "drop", "unchanged %"]

    def markdown(self, title: str | None = None) -> str:
        lines = [f"### {title}", ""] if title else []
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "---|" * len(self.header))
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows())
        protocol = self.data["protocol"]
        lines.append("")
        lines.append(
            f"Score: protocol {protocol['name']} v{protocol['version']} per-question score "
            f"({self.data['score']}); drop = real - control; unchanged = answers identical to the "
            "real-image answer."
        )
        return "\n".join(lines) + "\n"

    def rich_table(self, title: str = "image reliance") -> Any:
        from rich.table import Table

        table = Table(title=title)
        for index, name in enumerate(self.header):
            table.add_column(name, justify="left" if index in (0, 2) else "right")
        for row in self.rows():
            table.add_row(*row)
        return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _mean(values: list[float]) -> float | None:
    return 100 * sum(values) / len(values) if values else None


def _same(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def _per_item(gt_path: Path, answers: Path, protocol: str, scorer: str | None, candidates: Path | None):
    from exgra.eval.protocol_scoring import score_protocol
    from exgra.eval.scoring import load_predictions

    # Partial: a run with --limit answered only the first questions; the groups hold what was answered.
    report = score_protocol(
        gt_path, answers, protocol, candidates_path=candidates, scorer=scorer, allow_partial=True
    )
    scores = {str(item.id): item.scores.get("score") for item in report.items}
    texts = {str(record.id): record.text for record in load_predictions(answers)}
    return report.metrics, scores, texts


def reliance_report(
    gt_path: str | Path,
    answers: str | Path,
    controls: dict[str, str | Path],
    protocol: str = "exgra-med",
    scorer: str | None = None,
    candidates: str | Path | None = None,
) -> RelianceReport:
    """Compare the answers with the real image to each control's answers, per question type.

    Every file is scored under ``protocol``; the per-question ``score`` (recall or closed hit for
    exgra-med, correct for medevalkit, F1 for tokenized-f1, ...) is averaged per group (all, OPEN,
    CLOSED by the data's ``answer_type``). ``unchanged`` is the share of questions whose answer text
    (case and spacing ignored) is the same as with the real image.
    """
    from exgra.eval.scoring import load_ground_truth

    gt_path = Path(gt_path)
    types = {str(record.id): record.answer_type for record in load_ground_truth(gt_path)}
    metrics, real_scores, real_texts = _per_item(gt_path, Path(answers), protocol, scorer, candidates)
    groups: dict[str, dict[str, Any]] = {}
    members = {
        group: [key for key in real_scores if group == "all" or types.get(key) == group] for group in GROUPS
    }
    per_control = {
        name: _per_item(gt_path, Path(path), protocol, scorer, candidates) for name, path in controls.items()
    }
    for group, keys in members.items():
        if not keys:
            continue
        real = _mean([real_scores[k] for k in keys if real_scores[k] is not None])
        entry: dict[str, Any] = {"n": len(keys), "real": real, "controls": {}}
        for name, (_, scores, texts) in per_control.items():
            missing = [k for k in keys if k not in texts]
            if missing:
                raise ExgraError(
                    f"the {name} control answers lack question {missing[0]}; rerun with --resume"
                )
            score = _mean([scores[k] for k in keys if scores.get(k) is not None])
            entry["controls"][name] = {
                "score": score,
                "drop": None if real is None or score is None else real - score,
                "unchanged": _mean([float(_same(texts[k], real_texts[k])) for k in keys]),
            }
        groups[group] = entry
    data = {
        "protocol": metrics["protocol"] | {"version": metrics["scorer"]["version"]},
        "score": "per-question score of the protocol, percent",
        "answers": str(Path(answers).resolve()),
        "controls": {name: str(Path(path).resolve()) for name, path in controls.items()},
        "groups": groups,
    }
    return RelianceReport(data)


def run_controls(config: Any, controls: Sequence[str]) -> RelianceReport | None:
    """Answer the test set of ``config`` (a :class:`VQAEvalConfig`) under each control, then compare.

    Each control is an ordinary resumable eval run (same model, prompt, decoding, seed) into
    :func:`control_output`. Returns the report on the main process (None on the others).
    """
    from exgra.eval.vqa import run_vqa_eval, sidecar_path

    if config.image_ablation != "none":
        raise ExgraError("--controls compares with the real image: leave --image-ablation at none")
    outputs = {}
    rank = 0
    for control in controls:
        outputs[control] = control_output(config.output, control)
        # Controls are scored without the LLM judge (exact match), as is the reliance table itself.
        update = {"image_ablation": control, "output": outputs[control], "judge_model": None}
        changed = config.model_copy(update=update)
        rank = run_vqa_eval(changed).process_index
    if rank != 0:
        return None
    report = reliance_report(
        config.data, config.output, outputs, config.protocol, config.scorer, config.candidates
    )
    report.json_path = sidecar_path(config.output, "reliance.json")
    report.markdown_path = sidecar_path(config.output, "reliance.md")
    write_json_atomic(report.json_path, report.data)
    write_text_atomic(report.markdown_path, report.markdown(f"Image reliance: {config.dataset}"))
    return report
