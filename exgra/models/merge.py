"""The model a checkpoint stores: LoRA adapters merged in, 4-bit (QLoRA) base weights dequantised.

A saved exgra checkpoint is a plain transformers checkpoint that loads anywhere, CPU included. A
QLoRA model is neither plain (peft wrappers) nor loadable without CUDA (bitsandbytes weights and a
``quantization_config`` in ``config.json``), so :func:`standalone_model` turns it into one.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["is_quantized", "standalone_model"]


def is_quantized(model: Any) -> bool:
    """Whether ``model`` (or the base model inside a peft wrapper) holds quantised base weights."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "hf_quantizer", None) is not None


def standalone_model(model: Any, dtype: torch.dtype) -> Any:
    """``model`` itself when it is plain; otherwise a copy with its LoRA adapters merged and its 4-bit
    weights dequantised to ``dtype`` (training goes on with the original, e.g. after a best-model save).

    The adapters are merged into the dequantised weights rather than into the 4-bit ones (peft's
    ``merge_and_unload`` on a 4-bit model re-quantises the sum, adding NF4 rounding error to the trained
    update): each adapter's ``get_delta_weight`` is taken first, the adapters are removed, the base
    dequantised, and the deltas added to its weights.
    """
    peft = hasattr(model, "unload")
    quantized = is_quantized(model)
    if not peft and not quantized:
        return model
    model = copy.deepcopy(model)
    deltas: dict[str, torch.Tensor] = {}
    if peft:
        from peft.tuners.lora import LoraLayer

        for name, module in model.get_base_model().named_modules():
            if isinstance(module, LoraLayer):
                adapters = [a for a in module.active_adapters if a in module.lora_A]
                if adapters:
                    deltas[name] = sum(module.get_delta_weight(a) for a in adapters)
        model = model.unload()  # the base model with each adapter's wrapped layer back in its place
    if quantized:
        model.dequantize(dtype=dtype)  # bitsandbytes layers -> nn.Linear; quantization_config removed
        # prepare_model_for_kbit_training kept the unquantised modules in fp32: one dtype throughout.
        model.to(dtype)
    with torch.no_grad():
        for name, delta in deltas.items():
            weight = model.get_submodule(name).weight
            weight.data += delta.to(weight.device)  # as peft's own merge adds it (promoted, then cast)
    return model
