"""One training step's losses and diagnostics (REFERENCE §2.1, §2.9, §2.11).

:class:`TrainingModule` returns a dict: ``loss`` (the tensor to back-propagate), every ``*_loss``
(tensors) and the alignment module's diagnostics (floats, prefixed ``align_``). The loop logs whatever
arrives, so a new loss or diagnostic needs no change in the loop or the logger.

The image features are computed once (``model.encode_images``) and reused twice: spliced into the
LM pass through ``inputs_embeds`` and mean-pooled over patches as the image node features. The
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
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str, text_source: str
) -> torch.Tensor:
    """Text features [B, D] of text-only ``input_ids`` [B, L]: the LLM's last hidden state
    (``text_source="llm_output"``) or the raw token embeddings (``"embeddings"``), pooled."""
    if text_source == "embeddings":
        embeddings = model.get_input_embeddings()(input_ids)
        return pool_hidden_states(embeddings, attention_mask, pooling)
    return model.pooled_text_features(input_ids, attention_mask, pooling=pooling)


def _language_model(model: Any) -> nn.Module:
    """The decoder stack (no LM head) of the VLM, also through a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.language_model


def _packed_text_features(
    model: Any, batches: list[tuple[torch.Tensor, torch.Tensor]], pooling: str, text_source: str, pad_id: int
) -> list[torch.Tensor]:
    """Features of several right-padded text batches from one forward of their concatenation."""
    length = max(ids.shape[1] for ids, _ in batches)
    ids = torch.cat([nn.functional.pad(i, (0, length - i.shape[1]), value=pad_id) for i, _ in batches])
    mask = torch.cat([nn.functional.pad(m, (0, length - m.shape[1]), value=0) for _, m in batches])
    if text_source == "embeddings":
        hidden = model.get_input_embeddings()(ids)
    else:
        hidden = _language_model(model)(
            input_ids=ids, attention_mask=mask, return_dict=True
        ).last_hidden_state
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
    ) -> None:
        super().__init__()
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
        image_features = model.encode_images(batch["pixel_values"])  # [B, N, D]
        inputs_embeds = model.embed_inputs(batch["input_ids"], image_features)  # [B, L, D]
        output = model(
            inputs_embeds=inputs_embeds,
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            use_cache=False,
        )
        lm_loss = output.loss
        losses = {"lm_loss": lm_loss}
        if self.alignment is None:
            losses["align_loss"] = torch.zeros((), device=lm_loss.device, dtype=lm_loss.dtype)
            losses["loss"] = lm_loss
            return losses
        image = image_features.mean(1)  # [B, D], projector output pooled over patches (§2.1)
        text_batches = [
            (batch["response_ids"], batch["response_mask"]),
            (batch["caption_ids"], batch["caption_mask"]),
        ]
        if self.pack_text_passes:
            response, caption = _packed_text_features(
                model, text_batches, self.text_pooling, self.text_source, self.pad_token_id
            )
        else:
            response, caption = (
                pooled_text_features(model, ids, mask, self.text_pooling, self.text_source)
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
