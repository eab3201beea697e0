"""One request's position in its grammar.

Owns `GrammarState`: the allowed-token mask for the next step, advancing by sampled or forced
tokens, the forced tokens themselves (jump-forward), and whether the grammar can or must end.
Knows nothing of the model, the KV cache or sampling; the engine decides what to do with each
answer. Not thread-safe: one state belongs to one request, used by the engine loop only.
"""

from __future__ import annotations

import llguidance
import numpy as np
import torch

from lmnb.runtime.grammar.bitmask import num_words, unpack_bitmask
from lmnb.runtime.grammar.errors import GrammarError


class GrammarState:
    """A matcher over token ids. Every method is O(mask) or cheaper; none blocks on compiling."""

    def __init__(self, matcher: llguidance.LLMatcher, tokenizer: llguidance.LLTokenizer,
                 vocab_size: int) -> None:
        self._matcher = matcher
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        # scratch bitmask row; numpy-allocated (torch's fill can stall on busy cores)
        self._words = torch.from_numpy(np.zeros(num_words(vocab_size), dtype=np.int32))

    # ---- masks ------------------------------------------------------------------------------

    def fill_bitmask(self, row: torch.Tensor) -> None:
        """Write the next step's allowed tokens into row: [num_words] int32, contiguous, CPU.

        EOS is allowed exactly when the grammar accepts. Raises GrammarError if the matcher has
        failed (nothing would be allowed).
        """
        words = self._words.numel()
        if row.dtype != torch.int32 or not row.is_contiguous() or row.device.type != "cpu" \
                or row.numel() < words:
            raise ValueError(f"row must be a contiguous CPU int32 tensor of {words} words")
        self._matcher.unsafe_compute_mask_ptr(row.data_ptr(), words * 4)
        self._raise_if_failed()

    def fill_mask(self, mask: torch.Tensor) -> None:
        """Overwrite mask: [vocab_size] bool with True where the next token is allowed."""
        self.fill_bitmask(self._words)
        unpack_bitmask(self._words, self.vocab_size, out=mask)

    # ---- advancing --------------------------------------------------------------------------

    def accept(self, token_id: int) -> None:
        """Advance by one sampled token (EOS included, where `can_end()`)."""
        if not self._matcher.consume_token(int(token_id)):
            raise GrammarError(f"token {token_id} rejected by the grammar: {self._error()}")

    def forced_ids(self) -> list[int]:
        """Jump-forward: the tokens the grammar forces next, canonical for the tokenizer.

        llguidance tokenizes the forced bytes and holds back the trailing tokens that could merge
        with what follows; the check here keeps only the prefix the tokenizer itself writes for
        that text, so a split the tokenizer would not make is never returned. [] if none.
        """
        if self._matcher.is_stopped():
            return []
        ids = self._matcher.compute_ff_tokens()
        if not ids:
            return []
        canonical = self._tokenizer.tokenize_bytes(self._tokenizer.decode_bytes(ids))
        keep = 0
        while keep < len(ids) and keep < len(canonical) and ids[keep] == canonical[keep]:
            keep += 1
        return ids[:keep]

    def accept_forced(self, ids: list[int]) -> None:
        """Advance by forced tokens the engine appended (a prefix of `forced_ids()` is fine)."""
        if ids and not self._matcher.consume_tokens([int(i) for i in ids]):
            raise GrammarError(f"forced tokens {ids} rejected by the grammar: {self._error()}")

    # ---- ending -----------------------------------------------------------------------------

    def is_finished(self) -> bool:
        """The grammar has ended: nothing but EOS could follow (or it failed). Stop the request."""
        return self._matcher.is_stopped()

    def can_end(self) -> bool:
        """The text so far is a complete match: EOS (ending here) is allowed."""
        return self._matcher.is_accepting()

    # ---- errors -----------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        if self._matcher.is_error():
            raise GrammarError(f"grammar matcher failed: {self._error()}")

    def _error(self) -> str:
        return self._matcher.get_error().strip().splitlines()[0] if self._matcher.is_error() else ""
