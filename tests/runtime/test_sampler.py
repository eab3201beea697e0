"""The sampler's greedy path on the host (numpy) chooses what torch's argmax chooses."""

from __future__ import annotations

import torch

from lmnb.runtime import sampler
from lmnb.runtime.params import SamplingParams


def _rows() -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(7, 4099, generator=gen)
    x[1, [10, 3000]] = 50.0  # a tie: the first maximum wins
    x[2, 77] = float("nan")  # a NaN counts as the maximum
    x[2, 9] = float("nan")
    x[3] = float("-inf")  # nothing finite: index 0
    x[3, 4000] = float("inf")
    x[4, :] = 0.25  # all equal
    return x


def test_host_greedy_equals_torch_argmax() -> None:
    x = _rows()
    greedy = [SamplingParams(temperature=0.0)] * len(x)
    for banned_ids in (None, [[], [10], [77, 9], [4000], [0, 1], [5], []]):
        host, _ = sampler.sample_on_device(x, greedy, [None] * len(x), banned_ids=banned_ids)
        torch_path = sampler._choose(x, greedy, [None] * len(x), None, None, None, banned_ids)
        assert host.tolist() == torch_path.tolist(), banned_ids
    banned_ids = [[], [10], [77, 9], [4000], [0, 1], [5], []]
    host, _ = sampler.sample_on_device(x, greedy, [None] * len(x), banned_ids=banned_ids)
    assert host[1] == 3000 and host[2] != 77 and host[3] != 4000 and host[4] == 2
    # the caller's logits are left as they were
    torch.testing.assert_close(x, _rows(), rtol=0, atol=0, equal_nan=True)


def test_host_greedy_keeps_logprobs_of_the_raw_row() -> None:
    x = _rows()[5:]
    params = [SamplingParams(temperature=0.0, return_logprobs=True)] * len(x)
    out, chosen = sampler.sample_on_device(x, params, [None] * len(x), banned_ids=[[0], []])
    want = torch.log_softmax(x, dim=-1).gather(1, out[:, None])[:, 0]
    assert torch.equal(chosen, want)
