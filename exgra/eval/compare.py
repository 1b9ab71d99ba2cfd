"""``exgra report``: several metrics files side by side (models x protocols x datasets).

Each metrics JSON written by ``exgra eval`` or ``exgra score`` becomes one row: the model, the
dataset, the protocol (with its version), which images were shown (real or a control), and the
protocol's three headline numbers (open, closed, overall) with the names of the metrics behind them.
The table prints in the terminal (rich) and is written as Markdown, CSV and a matplotlib plot.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exgra.errors import DataError
from exgra.io import read_json, write_text_atomic

__all__ = ["ReportRow", "collect_metrics_files", "load_row", "markdown_table", "csv_table", "plot_rows"]

# Metrics files from before protocols name only a scorer: the protocol it belongs to.
_SCORER_PROTOCOL = {
    "legacy": "exgra-med",
    "llava-med": "llava-med",
    "llava-med-pre35": "exgra-med",
    "strict": "strict",
}
COLUMNS = ("model", "dataset", "protocol", "images", "open", "closed", "overall", "metrics", "n", "file")


@dataclass
class ReportRow:
    model: str
    dataset: str
    protocol: str
    images: str
    open: float | None
    closed: float | None
    overall: float | None
    metrics: str  # the metric names behind open / closed / overall
    n: int
    file: str

    def cells(self) -> list[str]:
        values = asdict(self)
        return [_cell(values[name]) for name in COLUMNS]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _is_vqa_metrics(path: Path) -> bool:
    try:
        data = read_json(path, "metrics file")
    except DataError:
        return False
    return isinstance(data, dict) and isinstance(data.get("scorer"), dict)


def collect_metrics_files(paths: Iterable[str | Path]) -> list[Path]:
    """Metrics files named directly, and every VQA ``*.metrics.json`` / ``metrics.json`` under a folder."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates = sorted({*path.rglob("*.metrics.json"), *path.rglob("metrics.json")})
            inside = [candidate for candidate in candidates if _is_vqa_metrics(candidate)]
            if not inside:
                raise DataError(f"no metrics file of exgra eval or exgra score under {path}")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{path} is neither a metrics file nor a folder")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def _model_name(metrics: dict[str, Any], path: Path) -> str:
    model = (metrics.get("run") or {}).get("model")
    if not model:
        return path.parent.name
    parts = Path(model).parts
    # "run/final" and "run/checkpoint-100" say more than "final".
    generic = parts[-1] in ("final", "best") or parts[-1].startswith("checkpoint")
    return "/".join(parts[-2:]) if generic else parts[-1]


def _headline(metrics: dict[str, Any], protocol: str) -> tuple[list[float | None], str]:
    from exgra.eval.protocols import PROTOCOLS

    names = metrics.get("headline")
    if not isinstance(names, dict):
        spec = PROTOCOLS.get(protocol)
        keys = list(spec.headline) if spec else ["recall", "closed_accuracy", "mean_open_closed"]
        names = dict(zip(("open", "closed", "overall"), keys, strict=True))
    values = [metrics.get(names[part]) for part in ("open", "closed", "overall")]
    if values[2] is None and names["overall"] == "mean_open_closed":
        both = [v for v in values[:2] if isinstance(v, (int, float))]
        values[2] = sum(both) / len(both) if both else None
    return values, " / ".join(names[part] for part in ("open", "closed", "overall"))


def load_row(path: str | Path) -> ReportRow:
    """One table row from a metrics JSON (``exgra eval`` or ``exgra score`` output)."""
    path = Path(path)
    metrics = read_json(path, "metrics file")
    if not isinstance(metrics, dict) or "scorer" not in metrics:
        raise DataError(f"{path} is not a metrics file of exgra eval or exgra score (no 'scorer')")
    run = metrics.get("run") or {}
    arguments = metrics.get("arguments") or {}
    protocol_info = metrics.get("protocol") or {}
    scorer = metrics["scorer"].get("name", "?")
    if protocol_info:
        protocol = protocol_info["name"]
        label = f"{protocol} v{protocol_info.get('version', '?')}"
        if protocol_info.get("scorer") not in (None, metrics["scorer"].get("name")) or (
            protocol == "exgra-med" and scorer != "legacy"
        ):
            label += f" ({scorer})"
    else:
        protocol = _SCORER_PROTOCOL.get(scorer, scorer)
        label = f"{protocol} ({scorer} v{metrics['scorer'].get('version', '?')})"
    values, names = _headline(metrics, protocol)
    dataset = run.get("dataset") or Path(arguments.get("gt", path.name)).stem
    return ReportRow(
        model=_model_name(metrics, path),
        dataset=str(dataset),
        protocol=label,
        images=str(run.get("image_ablation", "none")).replace("none", "real"),
        open=values[0],
        closed=values[1],
        overall=values[2],
        metrics=names,
        n=int(metrics.get("num_open", 0) or 0) + int(metrics.get("num_closed", 0) or 0),
        file=str(path),
    )


def load_rows(paths: Iterable[str | Path]) -> list[ReportRow]:
    """Rows of every metrics file, sorted by dataset, protocol, images and model."""
    files = collect_metrics_files(paths)
    rows = [load_row(path) for path in files]
    # Two files with the same label (e.g. the demo's <fraction>/seed<k>/<arm>/metrics.json) are told
    # apart by their folder relative to the folder all files share.
    labels = [(r.model, r.dataset, r.protocol, r.images) for r in rows]
    if len(set(labels)) < len(labels):
        root = Path(os.path.commonpath([str(p.parent) for p in files]))
        for row, label, path in zip(rows, labels, files, strict=True):
            if labels.count(label) > 1:
                row.model = str(path.parent.relative_to(root)) or row.model
    return sorted(rows, key=lambda r: (r.dataset, r.protocol, r.images != "real", r.images, r.model))


def markdown_table(rows: Sequence[ReportRow]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row.cells()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[ReportRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        values = asdict(row)
        writer.writerow(["" if values[name] is None else values[name] for name in COLUMNS])
    return buffer.getvalue()


def rich_table(rows: Sequence[ReportRow]) -> Any:
    from rich.table import Table

    # The terminal gets the numbers; metric names and files are in the caption, Markdown and CSV.
    shown = [name for name in COLUMNS if name not in ("metrics", "file")]
    legend = sorted({f"{row.protocol.split(' ')[0]}: {row.metrics}" for row in rows})
    table = Table(title="exgra report (percent)", caption="open / closed / overall = " + "; ".join(legend))
    for name in shown:
        table.add_column(name, justify="right" if name in ("open", "closed", "overall", "n") else "left")
    for row in rows:
        cells = dict(zip(COLUMNS, row.cells(), strict=True))
        table.add_row(*(cells[name] for name in shown))
    return table


def plot_rows(rows: Sequence[ReportRow], path: str | Path, overwrite: bool = False) -> Path:
    """Grouped horizontal bars (open, closed, overall) per row, written atomically as PNG/PDF/SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    labels = [f"{r.model} | {r.dataset} | {r.protocol} | {r.images}" for r in rows]
    positions = np.arange(len(rows))
    figure, axes = plt.subplots(figsize=(9, 1.0 + 0.6 * len(rows)))
    bars = (("open", "#4C72B0"), ("closed", "#DD8452"), ("overall", "#55A868"))
    for offset, (part, colour) in enumerate(bars):
        values = [getattr(r, part) or 0.0 for r in rows]
        axes.barh(positions + (offset - 1) * 0.27, values, height=0.25, label=part, color=colour)
    axes.set_yticks(positions, labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("percent (each row: its protocol's headline metrics)")
    axes.set_xlim(0, 100)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(figure)
    from exgra.io import check_output_file

    check_output_file(path, overwrite)
    temporary = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary.write_bytes(buffer.getvalue())
    temporary.replace(path)
    return path


def write_report(
    rows: Sequence[ReportRow],
    markdown: Path | None = None,
    csv_path: Path | None = None,
    plot: Path | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write the requested outputs; every target is checked before anything is written."""
    from exgra.io import check_output_file

    targets = [p for p in (markdown, csv_path, plot) if p is not None]
    for target in targets:
        check_output_file(target, overwrite)
    written = []
    if markdown is not None:
        written.append(write_text_atomic(markdown, markdown_table(rows)))
    if csv_path is not None:
        written.append(write_text_atomic(csv_path, csv_table(rows)))
    if plot is not None:
        written.append(plot_rows(rows, plot, overwrite=True))
    return written
