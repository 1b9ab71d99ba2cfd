"""A key/value cache that grows in place instead of by concatenation.

transformers' ``DynamicLayer`` appends each decoding step's keys and values with ``torch.cat``, which
copies the whole cache of every layer at every step: for a batch of 32 rows of ~130 tokens that copy
was ~20% of a batched ``generate`` call on CPU (torch.profiler: ``aten::cat`` 60 ms of 285 ms), and it
grows with rows x length, so it ate most of what batching gains. :class:`GrowingLayer` keeps a buffer
with room to spare, writes the new step into it and hands attention a view of the filled part (the
same values, so the same results: attention reads a strided view exactly as the contiguous copy); the
buffer is re-allocated only when full, a chunk of steps at a time.

Only plain full-attention layers are replaced; sliding-window, chunked or shared layers keep
transformers' own classes.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

__all__ = ["GrowingLayer", "PrefixStore", "growing_cache"]

# Steps of room added whenever a buffer fills (at least; a quarter of the length for long caches).
_CHUNK = 64


class GrowingLayer(DynamicLayer):
    """``DynamicLayer`` whose ``keys`` / ``values`` are views of buffers that grow a chunk at a time."""

    def __init__(self, reserve: int = _CHUNK, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reserve = max(1, reserve)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._length = 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        end = self._length + new
        if self._key_buffer is None or end > self._key_buffer.shape[-2]:
            # The first call (the prompt) reserves room for the steps to come; later ones a chunk more.
            room = self.reserve if self._key_buffer is None else max(_CHUNK, end // 4)
            self._key_buffer = self._grow(self._key_buffer, key_states, end + room)
            self._value_buffer = self._grow(self._value_buffer, value_states, end + room)
        self._key_buffer[..., self._length : end, :] = key_states
        self._value_buffer[..., self._length : end, :] = value_states
        self._length = end
        self.keys = self._key_buffer[..., :end, :]
        self.values = self._value_buffer[..., :end, :]
        return self.keys, self.values

    def _grow(self, buffer: torch.Tensor | None, states: torch.Tensor, capacity: int) -> torch.Tensor:
        shape = (*states.shape[:-2], capacity, states.shape[-1])
        grown = torch.empty(shape, dtype=states.dtype, device=states.device)
        if buffer is not None:
            grown[..., : self._length, :] = buffer[..., : self._length, :]
        return grown

    def get_seq_length(self) -> int:
        return self._length

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        self._length = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if self.is_initialized and tokens_to_remove < 0:
            self._length = self.keys.shape[-2]

    def _rebuild(self) -> None:
        """After a batch-shape change (``keys`` replaced by a new tensor): start a fresh buffer."""
        keys, values = self.keys, self.values
        self._key_buffer = self._value_buffer = None
        self._length = 0
        if keys is not None and keys.numel():
            self.update(keys, values)

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._rebuild()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._rebuild()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._rebuild()


def growing_cache(
    model: Any,
    reserve: int,
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    batch_size: int = 1,
) -> DynamicCache | None:
    """A ``DynamicCache`` for ``model`` whose plain full-attention layers are :class:`GrowingLayer` with
    room for ``reserve`` new tokens at first; ``None`` (``generate`` chooses) when it has none.

    ``prefix`` (from :meth:`PrefixStore.states`, one entry per layer) is copied into each of the
    ``batch_size`` rows: ``generate`` then runs only the prompt tokens after it.
    """
    cache = DynamicCache(config=model.config)
    plain = [type(layer) is DynamicLayer for layer in cache.layers]
    if not any(plain) or (prefix is not None and (not all(plain) or len(prefix) != len(plain))):
        return None
    cache.layers = [
        GrowingLayer(reserve=reserve) if is_plain else layer
        for layer, is_plain in zip(cache.layers, plain, strict=True)
    ]
    for layer, (keys, values) in zip(cache.layers, prefix or [], strict=False):
        layer.update(keys.expand(batch_size, -1, -1, -1), values.expand(batch_size, -1, -1, -1))
    return cache


def _weights_key(model: Any) -> tuple[Any, ...]:
    """Changes whenever a weight is replaced or changed in place (an optimizer step bumps ``_version``)."""
    return tuple((param.data_ptr(), param._version, param.dtype) for param in model.parameters())


class PrefixStore:
    """The key/value states of shared prompt prefixes (the template's system prompt and its opening
    turns), computed once and copied into each call's cache instead of being recomputed for every row.

    A prompt's prefix tokens attend only to each other, so their states are the same in every prompt
    that starts with them; rows of a batch all share them. The states are recomputed when the model's
    weights change (in-training validation) and only the ``max_entries`` latest prefixes are kept.
    """

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[Any, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def states(self, model: Any, prefix_ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per layer ``(keys, values)`` ``[1, heads, P, dim]`` of ``prefix_ids``; ``None`` when the
        model's cache is not made of plain full-attention layers (sliding windows keep their own rule)."""
        key = (tuple(prefix_ids), _weights_key(model))
        if key in self._entries:
            self._entries[key] = self._entries.pop(key)  # most recently used last
            return self._entries[key]
        cache = DynamicCache(config=model.config)
        if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
            return None
        device = next(model.parameters()).device
        ids = torch.tensor([prefix_ids], device=device)
        model(
            input_ids=ids, attention_mask=torch.ones_like(ids), cache=cache, use_cache=True, logits_to_keep=1
        )
        states = [(layer.keys, layer.values) for layer in cache.layers]
        while len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = states
        return states
