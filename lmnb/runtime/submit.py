"""What a submitted request must be: checks that run in the caller's thread at submit.

Owns the prompt's accepted forms (text, or a list of int token ids) and whether a request can
ever run (not empty, inside the context, ids in the vocabulary, fits the pool). Sampling
parameters check themselves (`SamplingParams.validate`). Knows nothing of the loop or the
scheduler; every failure is a TypeError or ValueError that names the problem. Imports nothing
at run time beyond the standard library (lmnb.testing uses it without torch).
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only its `encode`: the scripted test backend passes its own tokenizer
    from lmnb.runtime.params import SamplingParams
    from lmnb.runtime.tokenizer import Tokenizer


def prompt_ids(prompt: Any, tokenizer: Tokenizer) -> list[int]:
    """A text prompt's token ids, or a list of token ids checked to be ints."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    if hasattr(prompt, "tolist") and not isinstance(prompt, (bytes, bytearray)):
        prompt = prompt.tolist()  # a numpy array or a torch tensor of ids
    if not isinstance(prompt, (list, tuple)):
        raise TypeError(f"prompt must be a str or a list of token ids (ints), got "
                        f"{type(prompt).__name__}")
    for i, t in enumerate(prompt):
        if isinstance(t, bool) or not isinstance(t, numbers.Integral):
            hint = " (to send text, pass one str)" if isinstance(t, str) else ""
            raise TypeError(f"prompt must be a str or a list of token ids (ints); item {i} "
                            f"is {t!r} ({type(t).__name__}){hint}")
    return [int(t) for t in prompt]


def check_fits(ids: list[int], params: SamplingParams, vocab_size: int, max_context: int,
               pool_capacity: int) -> None:
    if not ids:
        raise ValueError("the prompt is empty: give at least one token")
    if len(ids) >= max_context:
        raise ValueError(
            f"the prompt has {len(ids)} tokens, longer than the model's context of "
            f"{max_context} tokens (at least one position must remain for output)"
        )
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"token ids out of the vocabulary (size {vocab_size}): {bad[:5]}")
    bad = [t for t in params.stop_token_ids if t >= vocab_size]
    if bad:
        raise ValueError(f"stop_token_ids out of the vocabulary (size {vocab_size}): "
                         f"{bad[:5]}")
    need = min(len(ids) + params.max_new_tokens, max_context)
    if need > pool_capacity:
        raise ValueError(
            f"the request needs up to {need} KV slots (prompt {len(ids)} + max_new_tokens "
            f"{params.max_new_tokens}) but the pool holds {pool_capacity}; raise "
            f"max_tokens_in_cache or lower max_new_tokens"
        )
