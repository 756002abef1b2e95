"""The KV buffer of the continuous-batching engine (``components/backends/engine.py``) and its masks.

:class:`SlotCache` is what the model's attention layers see as their cache: ``update`` writes the new
keys and values of a forward at the buffer's next columns ``[t, t + q)`` (of every slot, or of the
slots in ``rows``) and returns the keys and values up to there; nothing is concatenated or copied
(except the rows of a partial forward). ``mask[slot, column]`` says which columns hold that slot's
tokens. The engine passes the 4-D attention mask itself (:func:`decode_mask`, :func:`prefill_mask`), so
the model never asks the cache for lengths.
"""

from __future__ import annotations

from typing import Any

import torch


class SlotCache:
    """Per-layer ``(slots, heads, capacity, head_dim)`` key and value buffers with a column mask."""

    def __init__(
        self, layers: int, slots: int, heads: int, head_dim: int, capacity: int, dtype: Any, device: str
    ) -> None:
        self.shape = (slots, heads, capacity, head_dim)
        self.dtype, self.device = dtype, device
        self.keys = [torch.zeros(self.shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(self.shape, dtype=dtype, device=device) for _ in range(layers)]
        self.mask = torch.zeros((slots, capacity), dtype=torch.bool)
        self.t = 0
        self.rows: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        return self.shape[2]

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``key``/``value`` (``(rows, heads, q, dim)``) at columns ``[t, t + q)``; return the
        buffer's keys and values of those rows up to ``t + q``."""
        end = self.t + key.shape[2]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self.rows is None:
            keys[:, :, self.t : end] = key
            values[:, :, self.t : end] = value
            return keys[:, :, :end], values[:, :, :end]
        keys[self.rows, :, self.t : end] = key
        values[self.rows, :, self.t : end] = value
        return keys[self.rows, :, :end], values[self.rows, :, :end]

    def advance(self, width: int) -> None:
        """The forward that wrote ``width`` columns is done."""
        self.t += width

    def mark(self, rows: list[int], start: int, valid: torch.Tensor) -> None:
        """Columns ``[start, start + width)`` of ``rows`` hold a token where ``valid`` is True."""
        self.mask[torch.tensor(rows), start : start + valid.shape[1]] = valid

    def drop(self, row: int, cols: list[int]) -> None:
        """Forget the tokens of ``row`` at ``cols``."""
        if cols:
            self.mask[row, torch.tensor(cols)] = False

    def clear_row(self, row: int) -> None:
        self.mask[row] = False

    def compact(self, room: int) -> list[dict[int, int]]:
        """Pack every slot's columns to the right of ``[0, t)`` so that ``room`` more columns fit (grow
        the buffer if needed); returns, per slot, where each old column went."""
        slots, heads, capacity, dim = self.shape
        used = self.mask[:, : self.t]
        counts = used.sum(dim=1).tolist()
        width = max(counts, default=0)
        index = torch.zeros((slots, width), dtype=torch.long)
        moved: list[dict[int, int]] = []
        for row in range(slots):
            cols = used[row].nonzero().flatten()
            index[row, width - len(cols) :] = cols
            moved.append({int(c): width - len(cols) + k for k, c in enumerate(cols.tolist())})
        if width + room > capacity:
            capacity = max(2 * capacity, width + room)
        self.shape = (slots, heads, capacity, dim)
        gather = index.to(self.device)[:, None, :, None].expand(slots, heads, width, dim)
        for layers in (self.keys, self.values):
            for layer, buffer in enumerate(layers):
                fresh = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
                fresh[:, :, :width] = buffer[:, :, : self.t].gather(2, gather)
                layers[layer] = fresh
        mask = torch.zeros((slots, capacity), dtype=torch.bool)
        for row in range(slots):
            mask[row, width - counts[row] : width] = True
        self.mask, self.t = mask, width
        return moved


def decode_mask(past: torch.Tensor) -> torch.Tensor:
    """``(rows, 1, 1, t + 1)``: one query per row sees its past columns and its own new one."""
    own = torch.ones((past.shape[0], 1), dtype=torch.bool)
    return torch.cat([past, own], dim=1)[:, None, None, :]


def prefill_mask(past: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``(rows, 1, w, t + w)`` for ``w`` new columns per row (``new``: which hold tokens, left-padded):
    a token sees the row's past and the new tokens up to itself; a pad sees only itself (no empty row)."""
    rows, width = new.shape
    causal = torch.tril(torch.ones((width, width), dtype=torch.bool))
    block = causal[None] & new[:, None, :]
    block |= torch.eye(width, dtype=torch.bool)[None]
    seen = past[:, None, :].expand(rows, width, past.shape[1]) & new[:, :, None]
    return torch.cat([seen, block], dim=2)[:, None]
