"""The vision-language model: transformers' LLaVA with a dense connector and feature access.

With ``dense_connector="none"`` and an ``mlp2x_gelu`` projector the model is exactly transformers'
``LlavaForConditionalGeneration`` (same config type ``llava``, same weight names), so a saved
checkpoint loads in stock transformers. Other variants use the config type ``exgra_llava``, which
``import exgra.models`` registers with the transformers Auto classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import LlavaModel, LlavaPreTrainedModel

__all__ = [
    "ExgraLlavaConfig",
    "ExgraLlavaForConditionalGeneration",
    "ExgraLlavaModel",
    "VisionProjector",
    "connector_layer_groups",
    "dense_connector_features",
    "pool_hidden_states",
]


@strict
class ExgraLlavaConfig(LlavaConfig):
    """``LlavaConfig`` plus the dense connector and projector type (config type ``exgra_llava``)."""

    model_type = "exgra_llava"

    dense_connector: Literal["none", "dci", "sci"] = "none"
    projector_type: Literal["mlp2x_gelu", "linear"] = "mlp2x_gelu"


def connector_layer_groups(
    num_hidden_states: int, select_layer: int, connector: str
) -> tuple[int, list[list[int]]]:
    """Hidden-state indices used by a dense connector.

    ``num_hidden_states`` counts the tower's ``hidden_states`` (embedding output + one per layer).
    Returns the index of the selected state and the index groups averaged (DCI) or taken one each
    (SCI) and channel-concatenated after it.

    DCI (generalises REFERENCE §1.3): the states ``0..s`` up to and including the selected one ``s``
    are split into a first and a second half (the first half is the smaller one for an odd count).
    For CLIP-L (25 states, ``s = 23``) this gives ``0..11`` and ``12..23`` exactly as the reference.
    SCI: the states at one and two thirds of the layers, ``L//3 - 1`` and ``2L//3 - 1`` with
    ``L = num_hidden_states - 1``; for CLIP-L these are 7 and 15 as in the reference.
    """
    selected = select_layer % num_hidden_states
    if connector == "none":
        return selected, []
    if connector == "dci":
        count = selected + 1
        if count < 2:
            raise ValueError("DCI needs at least two hidden states up to the selected layer")
        half = count // 2
        return selected, [list(range(0, half)), list(range(half, count))]
    if connector == "sci":
        layers = num_hidden_states - 1
        return selected, [[max(layers // 3 - 1, 0)], [max(2 * layers // 3 - 1, 0)]]
    raise ValueError(f"unknown dense connector {connector!r}")


def dense_connector_features(
    hidden_states: Sequence[torch.Tensor],
    select_layer: int = -2,
    connector: str = "none",
    drop_cls: bool = True,
) -> torch.Tensor:
    """Vision features fed to the projector.

    ``hidden_states``: the tower's ``L + 1`` states, each ``[B, 1 + N, C]`` (CLS first when
    ``drop_cls``). Returns ``[B, N, C]`` for ``none`` and ``[B, N, 3C]`` for ``dci``/``sci``:
    ``[selected ; group 1 ; group 2]`` along channels (see :func:`connector_layer_groups`).
    """
    selected, groups = connector_layer_groups(len(hidden_states), select_layer, connector)
    parts = [hidden_states[selected]]
    for group in groups:
        parts.append(torch.stack([hidden_states[index] for index in group], dim=0).mean(dim=0))
    features = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
    return features[:, 1:] if drop_cls else features


class VisionProjector(nn.Module):
    """``linear`` or ``mlp2x_gelu`` projector; weight names match transformers' LLaVA projector."""

    def __init__(self, in_features: int, out_features: int, projector_type: str = "mlp2x_gelu") -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features)
        if projector_type == "mlp2x_gelu":
            self.act = nn.GELU()
            self.linear_2 = nn.Linear(out_features, out_features)
        elif projector_type != "linear":
            raise ValueError(f"unknown projector type {projector_type!r}")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, N, C_vision]`` -> ``[B, N, D]``."""
        hidden = self.linear_1(features)
        if hasattr(self, "linear_2"):
            hidden = self.linear_2(self.act(hidden))
        return hidden


def _connector(config: LlavaConfig) -> str:
    return getattr(config, "dense_connector", "none")


class ExgraLlavaModel(LlavaModel):
    """``LlavaModel`` whose image features go through the dense connector and :class:`VisionProjector`."""

    config_class = ExgraLlavaConfig

    def __init__(self, config: LlavaConfig) -> None:
        LlavaPreTrainedModel.__init__(self, config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        width = config.vision_config.hidden_size * (1 if _connector(config) == "none" else 3)
        projector_type = getattr(config, "projector_type", "mlp2x_gelu")
        self.multi_modal_projector = VisionProjector(width, config.text_config.hidden_size, projector_type)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def select_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> tower features before the projector, ``[B, N, C]`` or ``[B, N, 3C]``."""
        first = next(self.vision_tower.parameters())
        outputs = self.vision_tower(
            pixel_values.to(device=first.device, dtype=first.dtype),
            output_hidden_states=True,
            return_dict=True,
        )
        layer = self.config.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError("exgra models select a single vision_feature_layer")
        drop_cls = self.config.vision_feature_select_strategy == "default"
        return dense_connector_features(outputs.hidden_states, layer, _connector(self.config), drop_cls)

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs: object) -> BaseModelOutputWithPooling:
        features = self.select_vision_features(pixel_values)
        projected = self.multi_modal_projector(features)
        return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=list(projected))


def pool_hidden_states(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pooling: str,
    length: int | None = None,
) -> torch.Tensor:
    """Pool ``hidden`` ``[B, L, D]`` to ``[B, D]``.

    ``mean`` averages the first ``length`` positions (all ``L`` by default), padding included, as the
    reference does; ``masked_mean`` averages only positions where ``attention_mask`` is 1.
    """
    if pooling == "masked_mean" and attention_mask is not None:
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return hidden[:, : hidden.shape[1] if length is None else length].mean(dim=1)


class ExgraLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """transformers' LLaVA plus the feature access that the alignment loss needs.

    Accepts a plain ``LlavaConfig`` (no dense connector, mlp2x_gelu) or an :class:`ExgraLlavaConfig`.
    """

    config_class = ExgraLlavaConfig

    def __init__(self, config: LlavaConfig) -> None:
        LlavaPreTrainedModel.__init__(self, config)
        self.model = ExgraLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        # Default pooling of pooled_text_features; ModelBundle sets it from ModelConfig.text_pooling.
        self.text_pooling = "mean"
        self.post_init()

    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_id)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values [B, 3, H, W]`` -> projector output ``[B, N, D]`` (what is spliced into the LLM)."""
        return self.model.multi_modal_projector(self.model.select_vision_features(pixel_values))

    def pooled_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, D]``: the projector output averaged over the N patches."""
        return self.encode_images(pixel_values).mean(dim=1)

    def pooled_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pooling: Literal["mean", "masked_mean"] | None = None,
    ) -> torch.Tensor:
        """Last LLM hidden state of a text-only input, pooled: ``[B, L]`` -> ``[B, D]``.

        ``mean`` averages all ``L`` positions, padding included, as the reference does; ``masked_mean``
        averages only positions where ``attention_mask`` is 1. No LM head is applied.
        """
        pooling = pooling or self.text_pooling
        if pooling not in ("mean", "masked_mean"):
            raise ValueError(f"unknown text pooling {pooling!r}; use 'mean' or 'masked_mean'")
        hidden = self.model.language_model(
            input_ids=input_ids, attention_mask=attention_mask, return_dict=True
        ).last_hidden_state
        return pool_hidden_states(hidden, attention_mask, pooling)

    def embed_inputs(
        self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token embeddings ``[B, L, D]`` with ``image_features [I, N, D]`` written over the image tokens.

        The ``I * N`` image-token positions of the batch are filled in order, as in ``forward``; pass
        the result as ``inputs_embeds`` to reuse features computed once by :meth:`encode_images`.
        """
        embeds = self.get_input_embeddings()(input_ids)
        mask = input_ids == self.image_token_id
        count = int(mask.sum())
        if image_features is None or image_features.numel() == 0:
            if count:
                raise ValueError(f"input_ids contain {count} image tokens but no image features were given")
            return embeds
        if count != image_features.shape[0] * image_features.shape[1]:
            raise ValueError(
                f"input_ids contain {count} image tokens but image_features has "
                f"{image_features.shape[0]} x {image_features.shape[1]} vectors"
            )
        features = image_features.to(device=embeds.device, dtype=embeds.dtype).reshape(-1, embeds.shape[-1])
        return embeds.masked_scatter(mask.unsqueeze(-1), features)


AutoConfig.register("exgra_llava", ExgraLlavaConfig, exist_ok=True)
AutoModel.register(ExgraLlavaConfig, ExgraLlavaModel, exist_ok=True)
AutoModelForImageTextToText.register(ExgraLlavaConfig, ExgraLlavaForConditionalGeneration, exist_ok=True)
