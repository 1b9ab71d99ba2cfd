"""``exgra demo``: the whole ExGra-Med pipeline on real medical images, on a CPU, in minutes.

Two arms (autoregressive-only stage 2, as LLaVA-Med; stage 2 with the multi-graph alignment loss) at
two pre-training data fractions, over several seeds, with the tiny model; a results table, a markdown
report and a plot. See docs/demo.md.
"""

from exgra.demo.pipeline import DemoResult, PhaseEvent, default_threads, run_demo, run_dir
from exgra.demo.report import DemoOutputs, plot_scores, results_table, write_outputs, write_report
from exgra.demo.results import GroupSummary, RunScore, Stat, collect_scores, summarize
from exgra.demo.settings import ARMS, DemoSettings, demo_settings, fraction_name

__all__ = [
    "ARMS",
    "DemoOutputs",
    "DemoResult",
    "DemoSettings",
    "GroupSummary",
    "PhaseEvent",
    "RunScore",
    "Stat",
    "collect_scores",
    "default_threads",
    "demo_settings",
    "fraction_name",
    "plot_scores",
    "results_table",
    "run_demo",
    "run_dir",
    "summarize",
    "write_outputs",
    "write_report",
]
