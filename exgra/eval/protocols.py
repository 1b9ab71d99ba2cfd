"""Evaluation protocols: prompt + decoding + scorer under one name, defined once, as data.

The same checkpoint is reported at 84, 53 or 51.4 on VQA-RAD closed depending on the protocol
(PEERS §7): what the model is asked, how it decodes and how the reply is scored. A protocol fixes all
three, so a number can be quoted with one name and a version. ``exgra eval ... --protocol NAME`` asks
the questions the protocol's way and scores with it; ``exgra score --protocol NAME`` scores answers
that were generated with that protocol's prompt (it refuses answers asked another way, see
:func:`check_prompt`). Definitions and sources: docs/scoring.md.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from exgra.errors import ExgraError

__all__ = [
    "PROMPT_STYLES",
    "PROTOCOLS",
    "Protocol",
    "ask",
    "get_protocol",
    "strip_options_suffix",
]

# How the question is put to the model (the conversation template is the model's own in every case).
PROMPT_STYLES: dict[str, str] = {
    "data": "the question exactly as in the test JSON (ExGra-Med data: closed questions carry "
    '(Answer with either "Yes" or "No").)',
    "no-options": "the question with the ExGra-Med (Answer with either ...) suffix removed, "
    "as LLaVA-Med asks",
    "medevalkit": "the question without the options suffix, then MedEvalKit's instruction on a new line: "
    "\"Please output 'yes' or 'no'(no extra output).\" when the gold answer is yes/no, else "
    '"Please answer the question concisely."',
}

# MedEvalKit's instructions (utils/question_formats.py, non-reasoning English prompts), verbatim:
# the protocol is only reproduced if the model reads exactly these words.
MEDEVALKIT_JUDGEMENT_INSTRUCTION = "Please output 'yes' or 'no'(no extra output)."
MEDEVALKIT_OPEN_INSTRUCTION = "Please answer the question concisely."

_OPTIONS_SUFFIX = re.compile(r"\s*\(Answer with either [^()]*\)\.?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol. ``headline`` names the metric keys of the open, closed and overall
    numbers (``exgra report`` shows these three)."""

    name: str
    version: str
    prompt: str  # a key of PROMPT_STYLES
    decoding: str
    scorer: str  # legacy, llava-med, strict (exgra.eval.scoring) or medevalkit, tokenized-f1
    headline: tuple[str, str, str]
    asks: str
    scores: str
    reported_by: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "prompt": self.prompt, "scorer": self.scorer}

    def describe(self) -> dict[str, Any]:
        return asdict(self)


_GREEDY = "greedy (do_sample=False), --max-new-tokens (exgra eval's default), the model's chat template"

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            name="exgra-med",
            version="1",
            prompt="data",
            decoding=_GREEDY,
            scorer="legacy",
            headline=("recall", "closed_accuracy", "mean_open_closed"),
            asks="the question as in the data, closed ones with their (Answer with either ...) suffix",
            scores="open: token recall after the reference normalisation; closed: gold is a substring of "
            "the reply; overall: mean of the two",
            reported_by="ExGra-Med, MedTrinity, Med-MoE (LLaVA-Med-style tables)",
            source="ExGra-Med run_eval.py (REFERENCE §7.2), reproduced bit for bit",
        ),
        Protocol(
            name="llava-med",
            version="1",
            prompt="no-options",
            decoding=_GREEDY,
            scorer="llava-med",
            headline=("recall", "closed_accuracy", "mean_open_closed"),
            asks="the bare question (LLaVA-Med's test files have no options suffix)",
            scores="open: token recall; closed: the reply contains 'yes' or 'no' and the gold as substrings "
            "(after LLaVA-Med PR #35); overall: mean of the two",
            reported_by="LLaVA-Med v1 paper, Table 4",
            source="LLaVA-Med llava/eval/run_eval.py, tag v1.0.0 (PEERS §2.2)",
        ),
        Protocol(
            name="medevalkit",
            version="1",
            prompt="medevalkit",
            decoding=_GREEDY,
            scorer="medevalkit",
            headline=("open_exact_match", "closed_accuracy", "accuracy"),
            asks="gold yes/no: the question + \"Please output 'yes' or 'no'(no extra output).\"; "
            'other: the question + "Please answer the question concisely."',
            scores="closed (gold is exactly yes/no): exactly one of yes/no occurs in the reply and it is "
            "the gold; open: exact match after lower-casing, or an LLM judge (--judge-model); overall: "
            "accuracy over all questions",
            reported_by="Lingshu, InfiMed, Hulu-Med leaderboards",
            source="MedEvalKit 9b12e3b utils/VQA_RAD/VQA_RAD.py, utils/utils.py, utils/question_formats.py "
            "(PEERS §7, quirks included)",
        ),
        Protocol(
            name="tokenized-f1",
            version="1",
            prompt="data",
            decoding=_GREEDY,
            scorer="tokenized-f1",
            headline=("f1_open", "f1_closed", "f1"),
            asks="the question as in the data",
            scores="SQuAD token F1 (lower case, punctuation and articles removed, clipped counts) per "
            "question, averaged over all questions (and over open / closed)",
            reported_by="MedGemma technical report (VQA-RAD, SLAKE, PathVQA)",
            source="MedGemma report names the metric; the definition is SQuAD's (Rajpurkar et al. 2016)",
        ),
        Protocol(
            name="strict",
            version="1",
            prompt="data",
            decoding=_GREEDY,
            scorer="strict",
            headline=("exact_match", "closed_accuracy", "accuracy"),
            asks="the question as in the data",
            scores="open: normalised exact match; closed: the option the reply commits to, read as whole "
            "words, is the gold; overall: accuracy over all questions",
            reported_by="exgra (lmms-eval SLAKE uses normalised exact match)",
            source="exgra docs/scoring.md 'strict'",
        ),
    )
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; an unknown name is one clear error listing the choices."""
    if name not in PROTOCOLS:
        raise ExgraError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def strip_options_suffix(question: str) -> str:
    """The question without a trailing ``(Answer with either ...)`` suffix (REFERENCE §4.4)."""
    return _OPTIONS_SUFFIX.sub("", question).strip()


def ask(prompt_style: str, question: str, gold_answer: str) -> str:
    """The text put to the model under ``prompt_style`` for a question (``<image>`` already removed).

    ``medevalkit`` chooses its instruction from the *gold* answer (yes/no or not), as MedEvalKit does.
    """
    if prompt_style == "data":
        return question
    bare = strip_options_suffix(question)
    if prompt_style == "no-options":
        return bare
    if prompt_style == "medevalkit":
        closed = gold_answer.lower().strip() in ("yes", "no")
        instruction = MEDEVALKIT_JUDGEMENT_INSTRUCTION if closed else MEDEVALKIT_OPEN_INSTRUCTION
        return f"{bare}\n{instruction}"
    raise ExgraError(f"unknown prompt style {prompt_style!r}; choose one of {', '.join(PROMPT_STYLES)}")
