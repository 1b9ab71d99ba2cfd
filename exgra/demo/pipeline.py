"""The demo pipeline: demo data -> stage 1 -> stage 2 (two arms) -> fine-tuning -> eval -> score.

Everything goes through the library functions behind ``exgra prepare demo``, ``exgra train``,
``exgra finetune``, ``exgra eval vqa`` and ``exgra score``; each training phase is a recipe YAML
written beside its folder, so any phase can be rerun by hand with the same command.

Layout of ``output_dir``::

    demo.json                           the settings (a rerun with other settings is refused)
    timings.json                        seconds per finished phase
    data/                               the demo dataset (exgra.data.demo_data)
    <fraction>/seed<k>/stage1/          stage 1, shared by both arms (no alignment loss in stage 1)
    <fraction>/seed<k>/<arm>/stage2/    stage 2 with (exgra) or without (autoregressive) alignment
    <fraction>/seed<k>/<arm>/finetune/  VQA fine-tuning on the demo train split
    <fraction>/seed<k>/<arm>/answers.jsonl, metrics.json
    report.md, results.json, scores.png

A phase is done when its final output exists (``final/training_metrics.json``, ``answers.jsonl``,
``metrics.json``); a rerun skips finished phases and resumes an interrupted training run from its
latest checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from exgra.demo.settings import ARMS, DemoSettings, fraction_name
from exgra.errors import ExgraError
from exgra.io import write_json_atomic, write_text_atomic

__all__ = ["DemoResult", "PhaseEvent", "default_threads", "run_demo", "run_dir"]

SETTINGS_FILE = "demo.json"
TIMINGS_FILE = "timings.json"
DATA_DIR = "data"
_FINAL_MARKER = Path("final") / "training_metrics.json"


@dataclass
class PhaseEvent:
    """Reported after each phase: its position, a readable name, seconds, and whether it was skipped."""

    index: int
    total: int
    name: str
    seconds: float
    skipped: bool


@dataclass
class DemoResult:
    """What :func:`run_demo` produced. ``interrupted`` runs can be resumed by calling it again."""

    output_dir: Path
    settings: DemoSettings
    interrupted: bool = False
    report_path: Path | None = None
    plot_path: Path | None = None
    results_path: Path | None = None
    summary: list[Any] = field(default_factory=list)
    seconds: float = 0.0


def run_dir(output_dir: Path, fraction: float, seed: int) -> Path:
    """The folder of one (fraction, seed): ``<output_dir>/<fraction>/seed<seed>``."""
    return output_dir / fraction_name(fraction) / f"seed{seed}"


class _Interrupted(Exception):
    """A training phase stopped on Ctrl-C after saving a checkpoint."""


def _prepare_output_dir(output_dir: Path, settings: DemoSettings) -> None:
    """Create ``output_dir`` with ``demo.json``, or check that an existing one used the same settings."""
    stored = output_dir / SETTINGS_FILE
    wanted = settings.model_dump(mode="json")
    if output_dir.exists() and not output_dir.is_dir():
        raise ExgraError(f"output dir {output_dir} exists and is not a folder")
    if stored.is_file():
        try:
            previous = json.loads(stored.read_text(encoding="utf-8")).get("settings", {})
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            raise ExgraError(f"{stored} is unreadable ({exc}); choose another --output-dir") from exc
        changed = sorted(key for key in set(previous) | set(wanted) if previous.get(key) != wanted.get(key))
        if changed:
            details = ", ".join(f"{key}: {previous.get(key)} -> {wanted.get(key)}" for key in changed[:5])
            raise ExgraError(
                f"{output_dir} holds a demo run with other settings ({details}); rerun with the same "
                "options to resume it, or choose another --output-dir"
            )
        return
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise ExgraError(
            f"output dir {output_dir} is not empty and holds no demo run; choose another --output-dir"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    from exgra import __version__

    write_json_atomic(stored, {"settings": wanted, "exgra_version": __version__})


@contextlib.contextmanager
def _phase_log(path: Path, quiet: bool) -> Iterator[None]:
    """Send what a phase prints (record counts, weight-loading bars) to its log file."""
    if not quiet:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        path.open("a", encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        yield


def _write_recipe(path: Path, stage: str, recipe: dict[str, Any]) -> Path:
    command = "exgra finetune" if stage == "finetune" else f"exgra train {stage}"
    header = (
        f"# {command} --config {path.name} --output-dir {path.with_suffix('').name} --resume\n"
        "# Written by `exgra demo`: the tiny CPU recipe of this phase.\n"
    )
    return write_text_atomic(path, header + yaml.safe_dump(recipe, sort_keys=False))


class _Pipeline:
    def __init__(
        self, output_dir: Path, settings: DemoSettings, on_phase: Callable[[PhaseEvent], None], quiet: bool
    ) -> None:
        self.output_dir = output_dir
        self.settings = settings
        self.on_phase = on_phase
        self.quiet = quiet
        self.data = output_dir / DATA_DIR
        per_run = 1 + len(ARMS) * 4  # stage 1, then stage 2, fine-tune, eval, score per arm
        # + the image-reliance controls of both arms, once (seed 0, largest fraction): keeps the demo fast
        self.total = 1 + len(settings.fractions) * settings.seeds * per_run + len(ARMS)
        self.index = 0
        timings_path = output_dir / TIMINGS_FILE
        self.timings: dict[str, float] = (
            json.loads(timings_path.read_text(encoding="utf-8")) if timings_path.is_file() else {}
        )

    # ------------------------------------------------------------------------------------ bookkeeping

    def _phase(self, key: str, name: str, done: bool, work: Callable[[], None]) -> None:
        self.index += 1
        if done:
            self.on_phase(PhaseEvent(self.index, self.total, name, self.timings.get(key, 0.0), True))
            return
        started = time.perf_counter()
        work()
        seconds = time.perf_counter() - started
        self.timings[key] = seconds
        write_json_atomic(self.output_dir / TIMINGS_FILE, self.timings)
        self.on_phase(PhaseEvent(self.index, self.total, name, seconds, False))

    # --------------------------------------------------------------------------------------- phases

    def build_data(self) -> None:
        from exgra.data.demo_data import build_demo_dataset

        def work() -> None:
            build_demo_dataset(
                self.data,
                seed=self.settings.data_seed,
                image_size=self.settings.image_size,
                num_samples=self.settings.num_samples,
                overwrite=True,
            )

        # checksums.sha256 is written last, and the folder appears only once complete.
        self._phase("data", "demo dataset", (self.data / "checksums.sha256").is_file(), work)

    def _train(self, stage: str, phase_dir: Path, recipe: dict[str, Any]) -> None:
        from exgra.training import latest_checkpoint, load_train_config, run_training

        recipe_path = _write_recipe(phase_dir.with_name(f"{phase_dir.name}.yaml"), stage, recipe)
        config = load_train_config(stage, recipe_path, output_dir=phase_dir)
        # An interrupted run resumes from its checkpoint; one stopped before its first checkpoint
        # restarts (overwrite removes only what a training run writes).
        resume = phase_dir.is_dir() and latest_checkpoint(phase_dir) is not None
        overwrite = phase_dir.is_dir() and not resume
        with _phase_log(phase_dir.with_name(f"{phase_dir.name}.log"), self.quiet):
            result = run_training(config, resume=resume, overwrite=overwrite, show_progress=not self.quiet)
        if result.interrupted:
            raise _Interrupted(str(phase_dir))

    def _recipe(self, stage: str, seed: int, fraction: float, model: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        pretraining = stage != "finetune"
        data: dict[str, Any] = {
            "train_json": str((self.data / ("pretrain.json" if pretraining else "train.json")).resolve()),
            "image_folder": str((self.data / "images").resolve()),
            "max_length": s.max_length,
        }
        train: dict[str, Any] = {"stage": stage, "seed": seed, "precision": "fp32", "warmup_ratio": 0.1}
        if pretraining:
            # The same seeded subset in stages 1 and 2 and in both arms of a seed.
            data.update(fraction=fraction, fraction_seed=seed)
            train.update(
                epochs=s.epochs(stage),
                per_device_batch_size=getattr(s, f"{stage}_batch_size"),
                lr=getattr(s, f"{stage}_lr"),
            )
        else:
            train.update(
                max_steps=s.scaled_finetune_steps(),
                per_device_batch_size=s.finetune_batch_size,
                lr=s.finetune_lr,
            )
        # Phases take seconds: no periodic checkpoints (a Ctrl-C still saves one to resume from).
        train.update(grad_accum=1, save_every=None, keep_last=1)
        return {"model": model, "data": data, "train": train}

    def run_one(self, fraction: float, seed: int) -> None:
        s = self.settings
        base = run_dir(self.output_dir, fraction, seed)
        label = f"{fraction_name(fraction).replace('pct', '%')} data, seed {seed}"
        stage1 = base / "stage1"
        self._phase(
            f"{base.relative_to(self.output_dir)}/stage1",
            f"{label}: stage 1 (both arms)",
            (stage1 / _FINAL_MARKER).is_file(),
            lambda: self._train("stage1", stage1, self._recipe("stage1", seed, fraction, {"name": s.model})),
        )
        for arm, arm_label in ARMS.items():
            folder = base / arm
            key = f"{base.relative_to(self.output_dir)}/{arm}"
            stage2, finetune = folder / "stage2", folder / "finetune"
            answers, metrics = folder / "answers.jsonl", folder / "metrics.json"

            def stage2_work(arm: str = arm, stage2: Path = stage2) -> None:
                recipe = self._recipe(
                    "stage2", seed, fraction, {"name": s.model, "path": str((stage1 / "final").resolve())}
                )
                recipe["alignment"] = {"enabled": arm == "exgra", "alpha": s.alignment_alpha}
                if arm == "exgra":
                    # Same maths, one text forward instead of two: faster on a CPU.
                    recipe["alignment"]["pack_text_passes"] = True
                self._train("stage2", stage2, recipe)

            def finetune_work(stage2: Path = stage2, finetune: Path = finetune) -> None:
                model = {"name": s.model, "path": str((stage2 / "final").resolve())}
                self._train("finetune", finetune, self._recipe("finetune", seed, fraction, model))

            self._phase(
                f"{key}/stage2",
                f"{label}, {arm_label}: stage 2",
                (stage2 / _FINAL_MARKER).is_file(),
                stage2_work,
            )
            self._phase(
                f"{key}/finetune",
                f"{label}, {arm_label}: fine-tune",
                (finetune / _FINAL_MARKER).is_file(),
                finetune_work,
            )
            self._phase(
                f"{key}/eval",
                f"{label}, {arm_label}: eval (test split)",
                answers.is_file() and not list(folder.glob("answers.jsonl.part-*")),
                lambda finetune=finetune, answers=answers, folder=folder: self._evaluate(
                    finetune, answers, folder
                ),
            )
            self._phase(
                f"{key}/score",
                f"{label}, {arm_label}: score",
                metrics.is_file(),
                lambda answers=answers, metrics=metrics: self._score(answers, metrics),
            )
            if seed == 0 and fraction == s.fractions[-1]:
                self._phase(
                    f"{key}/reliance",
                    f"{label}, {arm_label}: image reliance",
                    (folder / "answers.reliance.json").is_file(),
                    lambda finetune=finetune, answers=answers, folder=folder: self._reliance(
                        finetune, answers, folder
                    ),
                )

    def _eval_config(self, finetune: Path, answers: Path) -> Any:
        from exgra.eval.vqa import VQAEvalConfig

        return VQAEvalConfig(
            model=finetune / "final",
            data=self.data / "test.json",
            images=self.data / "images",
            output=answers,
            dataset="demo",
            batch_size=self.settings.eval_batch_size,
            max_new_tokens=self.settings.max_new_tokens,
            device="cpu",
            resume=True,
            score=False,
            progress=not self.quiet,
            scorer=self.settings.scorer,
            candidates=self.data / "candidate.json",
        )

    def _evaluate(self, finetune: Path, answers: Path, folder: Path) -> None:
        from exgra.eval.vqa import run_vqa_eval

        with _phase_log(folder / "eval.log", self.quiet):
            run_vqa_eval(self._eval_config(finetune, answers))

    def _reliance(self, finetune: Path, answers: Path, folder: Path) -> None:
        from exgra.eval.controls import CONTROLS, run_controls

        with _phase_log(folder / "reliance.log", self.quiet):
            run_controls(self._eval_config(finetune, answers), CONTROLS)

    def _score(self, answers: Path, metrics: Path) -> None:
        from exgra.eval.scoring import score_answers

        report = score_answers(
            self.data / "test.json",
            answers,
            candidates_path=self.data / "candidate.json",
            scorer=self.settings.scorer,
        )
        report.save(metrics, overwrite=True)


def default_threads() -> int:
    """Half the CPU cores (at most 4): a tiny model gains little from more threads, and on a shared
    machine a torch thread pool as large as the core count slows down by an order of magnitude as
    soon as another process takes a core (measured on 2 cores: 0.05 s vs 2 s per step)."""
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def run_demo(
    output_dir: str | Path,
    settings: DemoSettings | None = None,
    on_phase: Callable[[PhaseEvent], None] | None = None,
    quiet: bool = True,
    threads: int | None = None,
) -> DemoResult:
    """Run (or resume) the whole demo in ``output_dir``; write the report, the results JSON and the plot.

    ``on_phase`` is called after every phase (finished or skipped because it was done before);
    ``quiet`` sends the phases' own output to log files beside their folders. A Ctrl-C during training
    saves a checkpoint and returns with ``interrupted=True``; calling again resumes.

    ``threads`` is torch's intra-op thread count during the run (default :func:`default_threads`;
    the previous value is restored afterwards).
    """
    import torch

    from exgra.demo.report import write_outputs

    started = time.perf_counter()
    output_dir = Path(output_dir)
    settings = settings or DemoSettings()
    _prepare_output_dir(output_dir, settings)
    pipeline = _Pipeline(output_dir, settings, on_phase or (lambda event: None), quiet)
    result = DemoResult(output_dir, settings)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads())
    try:
        pipeline.build_data()
        for seed in range(settings.seeds):
            for fraction in settings.fractions:
                pipeline.run_one(fraction, seed)
    except _Interrupted:
        result.interrupted = True
        result.seconds = time.perf_counter() - started
        return result
    finally:
        torch.set_num_threads(previous_threads)
    outputs = write_outputs(output_dir, settings, pipeline.timings)
    result.report_path, result.plot_path, result.results_path = outputs.report, outputs.plot, outputs.results
    result.summary = outputs.summary
    result.seconds = time.perf_counter() - started
    return result
