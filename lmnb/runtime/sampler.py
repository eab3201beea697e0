"""The sampler: next tokens for a batch of rows, each with its own parameters.

Owns greedy, temperature, top-k and top-p sampling, per-request seeded generators, and the
logprob of the chosen token under the model's unconstrained distribution. Allowed-token masks
(grammar, min_new_tokens) come in from the caller, as bools or as packed bits. Everything is
computed on the logits' device (generators must live there too), and the chosen tokens cross to
the host once, at the end. Knows nothing of requests or the KV pool.
"""

from __future__ import annotations

import numpy as np
import torch

from lmnb.runtime.device import host_to_device
from lmnb.runtime.grammar.bitmask import apply_bitmask_
from lmnb.runtime.params import SamplingParams


def sample(
    logits: torch.Tensor,  # [batch, vocab] fp32, raw
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    banned: torch.Tensor | None = None,  # [batch, vocab] bool, True where a token is not allowed
    allowed: torch.Tensor | None = None,  # [batch, words] int32: packed, a set bit allows
    mask_kernels: str | None = None,  # `apply_bitmask_`'s kernels (None: triton on a GPU)
    banned_ids: list[list[int]] | None = None,  # per row, a few ids not allowed (stop ids)
) -> tuple[list[int], list[float]]:
    out, chosen = sample_on_device(logits, params, generators, banned, allowed, mask_kernels,
                                   banned_ids)
    return out.tolist(), chosen.tolist()


def sample_on_device(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    banned: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    mask_kernels: str | None = None,
    banned_ids: list[list[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [batch] int64, their logprobs [batch] fp32), on the logits' device. The mask
    comes as bools (`banned`) or as a packed bitmask (`allowed`: applied on the logits'
    device, by a Triton kernel on a GPU; `grammar.bitmask.apply_bitmask_`). A row's logprob
    is computed only where its request asked for them (`return_logprobs`; else 0): a
    log-softmax over the vocabulary is a good part of a small decode step's sampling."""
    raw = logits
    if (logits.device.type == "cpu" and banned is None and allowed is None
            and all(p.greedy for p in params)):
        out = _greedy_on_host(logits, banned_ids)
    else:
        out = _choose(logits, params, generators, banned, allowed, mask_kernels, banned_ids)
    chosen = torch.zeros(len(params), dtype=torch.float32, device=logits.device)
    want = [i for i, p in enumerate(params) if p.return_logprobs]
    if want:
        rows = raw[want] if len(want) < len(params) else raw
        picked = out[want] if len(want) < len(params) else out
        chosen[want] = torch.log_softmax(rows.float(), dim=-1).gather(1, picked[:, None])[:, 0]
    return out, chosen


def _greedy_on_host(logits: torch.Tensor, banned_ids: list[list[int]] | None) -> torch.Tensor:
    """argmax of every row, the banned ids at -inf, by numpy on this thread: the same choice as
    torch's argmax (the first maximum; a NaN counts as the maximum), without waiting for
    torch's intra-op threads, which stall for ms right after a step on a busy CPU."""
    x = logits.detach().float().numpy()
    if banned_ids is not None and any(banned_ids):
        x = x.copy()
        for i, ids in enumerate(banned_ids):
            x[i, ids] = -np.inf
    return torch.from_numpy(np.argmax(x, axis=1).astype(np.int64))


def _choose(logits: torch.Tensor, params: list[SamplingParams],
            generators: list[torch.Generator | None], banned: torch.Tensor | None,
            allowed: torch.Tensor | None, mask_kernels: str | None,
            banned_ids: list[list[int]] | None) -> torch.Tensor:
    """The tokens, with every mask applied, on the logits' device."""
    if banned_ids is not None and any(banned_ids):  # the same -inf as a mask, on a few logits
        rows = [i for i, ids in enumerate(banned_ids) for _ in ids]
        where = host_to_device(rows + [t for ids in banned_ids for t in ids],
                               logits.device).view(2, -1)
        logits = logits.index_put((where[0], where[1]),
                                  torch.full((), float("-inf"), device=logits.device))
    if banned is not None:
        logits = logits.masked_fill(banned, float("-inf"))
    if allowed is not None:
        logits = apply_bitmask_(logits.clone(), allowed, mask_kernels)
    greedy = [i for i, p in enumerate(params) if p.greedy]
    if len(greedy) == len(params):
        out = logits.argmax(dim=-1)
    else:
        out = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
        if greedy:
            out[greedy] = logits[greedy].argmax(dim=-1)
        for i, p in enumerate(params):
            if not p.greedy:
                out[i] = _sample_row(logits[i], p, generators[i])
    return out


def _sample_row(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None,
                ) -> torch.Tensor:
    """One token id (a 0-d tensor on the logits' device: no synchronisation per row)."""
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
    return torch.multinomial(probs, 1, generator=gen)[0]
