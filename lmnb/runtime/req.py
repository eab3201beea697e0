"""One request's state inside the engine: its ids, KV bookkeeping, counters and handle.

Owns per-request progress: which tokens have K/V in the pool (`kv_len`), the locked radix node,
the req_to_token row, and the output. Knows nothing of batching policy or the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmnb.runtime.detokenizer import Detokenizer
from lmnb.runtime.handle import GenerateHandle
from lmnb.runtime.params import SamplingParams
from lmnb.runtime.radix_cache import Node


@dataclass(eq=False)
class Req:
    rid: int
    prompt_ids: list[int]
    params: SamplingParams
    handle: GenerateHandle
    detok: Detokenizer
    grammar: Any = None  # a grammar state (lmnb.runtime.grammar) or None
    arrival: int = 0  # scheduler step at submission, for fcfs and aging
    output_ids: list[int] = field(default_factory=list)
    row: int | None = None  # req_to_token row while admitted
    kv_len: int = 0  # all_ids[:kv_len] have K/V in slots req_to_token[row, :kv_len]
    cached_len: int = 0  # the part of kv_len that came from the radix cache at admission
    last_node: Node | None = None  # locked radix node covering the tree-held prefix
    tree_len: int = 0  # req_to_token[row, :tree_len] are slots owned by the tree
    admitted: bool = False  # counted in the hit statistics once
    prompt_logprobs: list[float] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    forced_ids: list[int] = field(default_factory=list)  # jump-forward tokens to extend next
    forced_tokens: int = 0
    forced_positions: list[int] = field(default_factory=list)  # offsets in output_ids
    jump_forward_steps: int = 0
    decode_steps: int = 0
    num_streamed_ids: int = 0
    finish_reason: str | None = None
    matched_stop: str | int | None = None
    error: BaseException | None = None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def seq_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_pending(self) -> int:
        """Tokens whose K/V still has to be computed."""
        return self.seq_len - self.kv_len

    @property
    def in_prefill(self) -> bool:
        """Still extending: prompt (or re-admitted output, or forced tokens) not all in the KV."""
        return self.num_pending > 1 or (self.num_pending == 1 and not self.output_ids)

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.params.logprob_start_len is not None

    @property
    def next_prompt_logprob(self) -> int | None:
        """The position whose logits give the next prompt logprob still missing (None: none).

        Logits at position q score prompt token q + 1; they start at logprob_start_len - 1
        and run to the second-to-last prompt position. The count already gathered says where
        to continue, also after a retraction or a failed admission.
        """
        if self.params.logprob_start_len is None:
            return None
        q = max(self.params.logprob_start_len, 1) - 1 + len(self.prompt_logprobs)
        return q if q <= len(self.prompt_ids) - 2 else None

    @property
    def max_total_len(self) -> int:
        return len(self.prompt_ids) + self.params.max_new_tokens
