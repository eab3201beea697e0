"""The sampler: next tokens for a batch of rows, each with its own parameters.

Owns greedy, temperature, top-k and top-p sampling, per-request seeded generators, and the
logprob of the chosen token under the model's unconstrained distribution. Allowed-token masks
(grammar, min_new_tokens) come in from the caller. Knows nothing of requests or the KV pool.
"""

from __future__ import annotations

import torch

from lmnb.runtime.params import SamplingParams


def sample(
    logits: torch.Tensor,  # [batch, vocab] fp32, raw
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    banned: torch.Tensor | None = None,  # [batch, vocab] bool, True where a token is not allowed
) -> tuple[list[int], list[float]]:
    logprobs = torch.log_softmax(logits, dim=-1)
    if banned is not None:
        logits = logits.masked_fill(banned, float("-inf"))
    out = torch.empty(logits.shape[0], dtype=torch.int64)
    greedy = [i for i, p in enumerate(params) if p.greedy]
    if greedy:
        out[greedy] = logits[greedy].argmax(dim=-1)
    for i, p in enumerate(params):
        if not p.greedy:
            out[i] = _sample_row(logits[i], p, generators[i])
    chosen = logprobs.gather(1, out[:, None])[:, 0]
    return out.tolist(), chosen.tolist()


def _sample_row(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
    logits = logits / p.temperature
    if p.top_k > 0 and p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        cum = sorted_probs.cumsum(-1)
        drop = cum - sorted_probs > p.top_p  # keep the smallest set whose mass reaches top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=gen))
