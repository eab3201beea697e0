"""Linear: the native, packed (oneDNN) and F.linear paths give the same products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmnb.runtime import cpu_kernels
from lmnb.runtime.linear import Linear


@pytest.mark.parametrize("rows", [1, 3, 8, 33, 300])
@pytest.mark.parametrize("with_bias", [False, True])
def test_products_match_f_linear(rows: int, with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, 40, generator=gen)
    bias = torch.randn(96, generator=gen) if with_bias else None
    x = torch.randn(rows, 40, generator=gen)
    want = F.linear(x, weight, bias)
    paths = [Linear(weight, bias, pack=True), Linear(weight, bias, pack=False)]
    if (native := cpu_kernels.load()) is not None:
        paths.append(Linear(weight, bias, native=native))
    for lin in paths:
        torch.testing.assert_close(lin(x), want, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(lin(x.t().contiguous().t()), want, rtol=1e-5, atol=1e-4)


def test_each_path_is_used_where_it_applies() -> None:
    weight = torch.randn(8, 4)
    if torch.backends.mkldnn.is_available():
        assert Linear(weight).path == "onednn"
    assert Linear(weight.double()).path == "torch"  # other dtypes: F.linear
    assert Linear(weight, pack=False).path == "torch"
    if (native := cpu_kernels.load()) is not None:
        lin = Linear(weight.bfloat16(), native=native)
        assert lin.path == "native" and lin.weight is None
        assert lin(torch.randn(2, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16
