"""The fixed choices of settings shared by library configs and command-line options, defined once.

Each is a ``Literal`` type: pydantic configs validate it for Python callers, typer shows and checks
it on the command line, and ``typing.get_args`` lists it in messages. This module imports nothing
heavy, so command modules can use it at import time without slowing ``exgra --help``.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "DtypeName",
    "ImageAblation",
    "OnFailure",
    "PromptTokenization",
    "ScorerName",
    "TemplateName",
    "WeightsDtype",
    "ZeroShotMethod",
    "choices",
]

DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
WeightsDtype = Literal["float32", "bfloat16", "float16"]  # a stored checkpoint's dtype (no "auto")
TemplateName = Literal["legacy", "chat", "mistral_instruct"]
PromptTokenization = Literal["fast", "slow"]  # the reference's eval tokenizer, or its training-time one
ScorerName = Literal["legacy", "strict", "llava-med", "llava-med-pre35"]
OnFailure = Literal["skip", "keep-original"]
ZeroShotMethod = Literal["likelihood", "legacy"]
ImageAblation = Literal["none", "blank", "noise", "shuffle"]


def choices(literal: object) -> tuple[str, ...]:
    """The allowed values of a ``Literal`` type, in order."""
    return tuple(get_args(literal))
