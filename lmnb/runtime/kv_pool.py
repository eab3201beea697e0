"""The token-indexed KV pool: per-layer k/v storage, the slot free list, and req_to_token rows.

Owns slot allocation. A slot is one token's K and V in every layer. Slot 0 is a padding sink
that is never handed out (padded gathers read it, padded writes land in it). Knows nothing of
the radix tree, requests or the model.
"""

from __future__ import annotations

import torch


class KVPool:
    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if num_slots < 2:
            raise ValueError("the KV pool needs at least 2 slots (slot 0 is the padding sink)")
        shape = (num_layers, num_slots, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # [layers, slots, kv_heads, dim]
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_slots = num_slots
        self.device = device
        # LIFO free list of usable slots (1..num_slots-1).
        self._free: list[int] = list(range(num_slots - 1, 0, -1))
        self._is_free = bytearray(b"\x01") * num_slots  # 1 where a slot is on the free list
        self._is_free[0] = 0

    @property
    def capacity(self) -> int:
        """Slots that can be handed out (all but the padding sink)."""
        return self.num_slots - 1

    @property
    def num_free(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int] | None:
        """n free slots, or None (and nothing taken) when fewer than n are free."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} slots")
        if n > len(self._free):
            return None
        if n == 0:
            return []
        taken = self._free[-n:]
        del self._free[-n:]
        for slot in taken:
            self._is_free[slot] = 0
        return taken

    def free(self, slots: list[int]) -> None:
        """Return slots to the free list; a slot freed twice (or slot 0) is a bookkeeping bug
        that would hand one slot to two requests, so it raises before anything changes."""
        for slot in slots:
            if not 0 < slot < self.num_slots or self._is_free[slot]:
                raise RuntimeError(f"KV slot {slot} freed twice or out of range")
        for slot in slots:
            self._is_free[slot] = 1
        self._free.extend(slots)

    def free_slots(self) -> list[int]:
        return list(self._free)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v [n, kv_heads, dim] at slots [n]."""
        self.k[layer].index_copy_(0, slots, k)
        self.v[layer].index_copy_(0, slots, v)


class ReqToToken:
    """A table of rows, one per running request: position -> slot (int64, 0 = padding)."""

    def __init__(self, num_rows: int, max_context: int, device: torch.device) -> None:
        self.table = torch.zeros((num_rows, max_context), dtype=torch.int64, device=device)
        self.max_context = max_context
        self._free_rows: list[int] = list(range(num_rows - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free_rows)

    def alloc(self) -> int | None:
        return self._free_rows.pop() if self._free_rows else None

    def free(self, row: int) -> None:
        self.table[row].zero_()
        self._free_rows.append(row)

    def set(self, row: int, start: int, slots: list[int]) -> None:
        if slots:
            self.table[row, start : start + len(slots)] = torch.tensor(
                slots, dtype=torch.int64, device=self.table.device)

    def set_many(self, writes: list[tuple[int, int, list[int]]]) -> None:
        """Several `set(row, start, slots)` in one indexed write: one copy to the device a
        decode step, not one (and on a GPU a synchronising copy) a request."""
        rows, cols, values = [], [], []
        for row, start, slots in writes:
            rows += [row] * len(slots)
            cols += range(start, start + len(slots))
            values += slots
        if values:
            at = torch.tensor([rows, cols, values], dtype=torch.int64, device=self.table.device)
            self.table[at[0], at[1]] = at[2]

    def get(self, row: int, end: int) -> list[int]:
        return self.table[row, :end].tolist()
