"""One training step's losses and diagnostics (REFERENCE §2.1, §2.9, §2.11).

:class:`TrainingModule` returns a dict: ``loss`` (the tensor to back-propagate), every ``*_loss``
(tensors) and the alignment module's diagnostics (floats, prefixed ``align_``). The loop logs whatever
arrives, so a new loss or diagnostic needs no change in the loop or the logger.

The image features are computed once (the model family's ``lm_forward``) and reused twice: fed to the
LM pass and mean-pooled per image as the image node features. The
response and extended-caption features are the pooled LLM outputs of two text-only passes; with
``pack_text_passes`` both batches run as one forward of the concatenated batch (same maths: with
causal attention and right padding the extra padding never changes the real positions, and the
pooling is restricted to each text's own length, padding included as in the reference).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from exgra.models.modeling import pool_hidden_states

__all__ = ["TrainingModule", "pooled_text_features"]


def pooled_text_features(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pooling: str,
    text_source: str,
    family: Any = None,
) -> torch.Tensor:
    """Text features [B, D] of text-only ``input_ids`` [B, L]: the LLM's last hidden state
    (``text_source="llm_output"``) or the raw token embeddings (``"embeddings"``), pooled."""
    if text_source == "embeddings":
        hidden = model.get_input_embeddings()(input_ids)
    else:
        decoder = (family or _default_family()).language_model(model)
        hidden = decoder(
            input_ids=input_ids, attention_mask=attention_mask, return_dict=True
        ).last_hidden_state
    return pool_hidden_states(hidden, attention_mask, pooling)


def _default_family() -> Any:
    from exgra.models.families import get_family

    return get_family("llava")


def _packed_text_features(
    model: Any,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    pooling: str,
    text_source: str,
    pad_id: int,
    family: Any = None,
) -> list[torch.Tensor]:
    """Features of several right-padded text batches from one forward of their concatenation."""
    length = max(ids.shape[1] for ids, _ in batches)
    ids = torch.cat([nn.functional.pad(i, (0, length - i.shape[1]), value=pad_id) for i, _ in batches])
    mask = torch.cat([nn.functional.pad(m, (0, length - m.shape[1]), value=0) for _, m in batches])
    if text_source == "embeddings":
        hidden = model.get_input_embeddings()(ids)
    else:
        hidden = (
            (family or _default_family())
            .language_model(model)(input_ids=ids, attention_mask=mask, return_dict=True)
            .last_hidden_state
        )
    features, start = [], 0
    for batch_ids, _ in batches:
        rows = slice(start, start + batch_ids.shape[0])
        features.append(pool_hidden_states(hidden[rows], mask[rows], pooling, length=batch_ids.shape[1]))
        start += batch_ids.shape[0]
    return features


class TrainingModule(nn.Module):
    """The VLM plus (in stage 2) the multi-graph alignment module, as one module for accelerate.

    Wrapping both lets DDP/FSDP see every trainable parameter in one ``forward``.
    """

    def __init__(
        self,
        model: nn.Module,
        alignment: nn.Module | None = None,
        alpha: float = 1.0,
        text_source: str = "llm_output",
        text_pooling: str = "mean",
        pack_text_passes: bool = False,
        pad_token_id: int = 0,
        family: Any = None,
    ) -> None:
        super().__init__()
        # The model family's adapter (exgra.models.families): how this model's LM pass and features run.
        self.family = family or _default_family()
        self.model = model
        self.alignment = alignment
        self.alpha = alpha
        self.text_source = text_source
        self.text_pooling = text_pooling
        self.pack_text_passes = pack_text_passes
        self.pad_token_id = pad_token_id

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Losses of one micro-batch: ``loss`` = ``lm_loss`` + alpha * ``align_loss`` (scalar tensors),
        plus ``align_<name>`` floats for each alignment diagnostic (matching accuracy, Hamming, ...)."""
        model = self.model
        # The image features are computed once: they feed the LM pass and, pooled per image, the graphs.
        lm_loss, image = self.family.lm_forward(model, batch)  # scalar, [B, D]
        losses = {"lm_loss": lm_loss}
        if self.alignment is None:
            losses["align_loss"] = torch.zeros((), device=lm_loss.device, dtype=lm_loss.dtype)
            losses["loss"] = lm_loss
            return losses
        text_batches = [
            (batch["response_ids"], batch["response_mask"]),
            (batch["caption_ids"], batch["caption_mask"]),
        ]
        if self.pack_text_passes:
            response, caption = _packed_text_features(
                model, text_batches, self.text_pooling, self.text_source, self.pad_token_id, self.family
            )
        else:
            response, caption = (
                pooled_text_features(model, ids, mask, self.text_pooling, self.text_source, self.family)
                for ids, mask in text_batches
            )
        aligned = self.alignment(
            {"image": image.float(), "response": response.float(), "caption": caption.float()}
        )
        align_loss = aligned.loss.to(lm_loss.dtype)
        losses["align_loss"] = align_loss
        losses["loss"] = lm_loss + self.alpha * align_loss
        for name, value in aligned.diagnostics.items():
            if name != "loss":  # already there as align_loss
                losses[f"align_{name}"] = value
        return losses
