"""ForwardBatch: the tensors one model forward needs, built from scheduled requests.

Owns the layout of an extend or decode step (flattened tokens, positions, destination slots,
per-request lengths, which positions need logits), and their crossing to the device (on a GPU
in one pinned copy). Knows nothing of sampling or the radix tree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmnb.runtime.device import host_to_device


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
        input_ids, positions, out_slots, logit_t = on_device([ids, pos, slots, logit_index],
                                                             device)
        return cls(
            is_decode=is_decode,
            input_ids=input_ids,
            positions=positions,
            out_slots=out_slots,
            rows=list(rows),
            seq_lens=seq_lens,
            extend_lens=[len(x) for x in new_ids],
            logit_index=logit_t,
            host=(ids, pos, slots),
        )


def on_device(lists: list[list[int]], device: torch.device) -> list[torch.Tensor]:
    """int64 tensors on `device`; on a GPU one pinned copy of them all, split into views."""
    if device.type != "cuda":
        return [torch.tensor(x, dtype=torch.int64, device=device) for x in lists]
    values = host_to_device([v for x in lists for v in x], device)
    return list(values.split([len(x) for x in lists]))
