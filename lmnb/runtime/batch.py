"""ForwardBatch: the tensors one model forward needs, built from scheduled requests.

Owns the layout of an extend or decode step (flattened tokens, positions, destination slots,
per-request lengths, which positions need logits). Knows nothing of sampling or the radix tree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ForwardBatch:
    is_decode: bool
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    out_slots: torch.Tensor  # [num_tokens] int64: where each token's k/v is written
    rows: list[int]  # per request: its req_to_token row
    seq_lens: list[int]  # per request: tokens in the KV after this step
    extend_lens: list[int]  # per request: new tokens in this step (1 when decoding)
    logit_index: torch.Tensor  # [num_logits] int64: flattened positions whose logits are needed
    # the host lists input_ids, positions and out_slots were made from (None: not kept), so a
    # GPU step can stage them without reading its device tensors back
    host: tuple[list[int], list[int], list[int]] | None = None

    @classmethod
    def build(
        cls,
        is_decode: bool,
        rows: list[int],
        prefix_lens: list[int],
        new_ids: list[list[int]],
        new_slots: list[list[int]],
        logit_positions: list[list[int]],
        device: torch.device,
    ) -> ForwardBatch:
        """logit_positions[i] are offsets into new_ids[i] whose logits are wanted."""
        ids, pos, slots, logit_index = [], [], [], []
        offset = 0
        for prefix, toks, sl, want in zip(prefix_lens, new_ids, new_slots, logit_positions):
            ids.extend(toks)
            pos.extend(range(prefix, prefix + len(toks)))
            slots.extend(sl)
            logit_index.extend(offset + j for j in want)
            offset += len(toks)
        seq_lens = [p + len(t) for p, t in zip(prefix_lens, new_ids)]

        def t(x: list[int]) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.int64, device=device)

        return cls(
            is_decode=is_decode,
            input_ids=t(ids),
            positions=t(pos),
            out_slots=t(slots),
            rows=list(rows),
            seq_lens=seq_lens,
            extend_lens=[len(x) for x in new_ids],
            logit_index=t(logit_index),
            host=(ids, pos, slots),
        )
