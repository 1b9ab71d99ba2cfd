"""Shared helpers for the model tests."""

from __future__ import annotations

import torch

from exgra.models import ModelBundle


def batch(
    bundle: ModelBundle, questions: list[str], seed: int = 0
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Tokenised legacy prompts (left padded) and random pixel values for ``len(questions)`` images."""
    template = bundle.conversation_template
    prompts = [template.prompt(question, bundle.image_tokens) for question in questions]
    encoded = bundle.tokenizer(prompts, return_tensors="pt", padding=True)
    generator = torch.Generator().manual_seed(seed)
    size = bundle.image_processor.image_size
    pixel_values = torch.randn(len(questions), 3, size, size, generator=generator)
    return dict(encoded), pixel_values
