"""Linear: the packed (oneDNN) path and the F.linear fallback give the same products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmnb.runtime.linear import Linear


@pytest.mark.parametrize("rows", [1, 3, 8, 33, 300])
@pytest.mark.parametrize("with_bias", [False, True])
def test_products_match_f_linear(rows: int, with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, 40, generator=gen)
    bias = torch.randn(96, generator=gen) if with_bias else None
    x = torch.randn(rows, 40, generator=gen)
    want = F.linear(x, weight, bias)
    for pack in (True, False):
        lin = Linear(weight, bias, pack=pack)
        assert (lin.packed is None) == (lin.weight is not None)
        torch.testing.assert_close(lin(x), want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(Linear(weight, bias)(x.t().contiguous().t()), want,
                               rtol=1e-5, atol=1e-4)  # a strided input


def test_packing_is_used_on_the_cpu_in_fp32_only() -> None:
    weight = torch.randn(8, 4)
    if torch.backends.mkldnn.is_available():
        assert Linear(weight).packed is not None
    assert Linear(weight.double()).packed is None  # other dtypes: F.linear
    assert Linear(weight, pack=False).packed is None
