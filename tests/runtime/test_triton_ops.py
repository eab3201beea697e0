"""The Triton row-wise ops (`triton_ops.py`) against their torch references, in Triton's
interpreter on the CPU (`TRITON_INTERPRET=1`, set by tests/conftest.py) or compiled on a GPU:
RMSNorm with and without the residual add, rotary in place on q/k viewed inside the fused
qkv output, the grammar bitmask on logits (and through the sampler and the output processor's
packed masks); the CUDA graphs' inputs staged from host lists, and the decode's key-split
buckets. Small shapes, odd widths (masked lanes), fp32 and bf16.

bf16 under the interpreter: its fp32 -> bf16 casts truncate where a GPU rounds to nearest, so
bf16 results are compared within a bf16 ulp or two, not bit for bit.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from transformers import LlamaConfig

from lmnb.runtime.batch import ForwardBatch
from lmnb.runtime.config import ModelConfig
from lmnb.runtime.grammar.bitmask import apply_bitmask_, num_words
from lmnb.runtime.model import rms_norm
from lmnb.runtime.outputs import OutputProcessor
from lmnb.runtime.params import SamplingParams
from lmnb.runtime.rope import RotaryTable
from lmnb.runtime.sampler import sample

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(scope="module")
def ops():
    module = importlib.import_module("lmnb.runtime.triton_ops")
    interpreting = importlib.import_module("lmnb.runtime.triton_attention").INTERPRET
    assert (DEVICE == "cpu") == interpreting, "TRITON_INTERPRET must be set before triton"
    return module


def randn(*shape: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)


def tolerance(dtype: torch.dtype) -> dict:
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2,
                                                                         "rtol": 2e-2}


@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_add_rms_norm_matches_torch(ops, dtype):
    """residual += x in place, then the norm of the sum (hidden 96: a masked lane block),
    as the model's `h = h + x; rms_norm(h)`; rows far apart in scale."""
    h = randn(7, 96, dtype=dtype) * torch.logspace(-2, 2, 7, device=DEVICE)[:, None].to(dtype)
    x, w = randn(7, 96, dtype=dtype, seed=1), randn(96, dtype=dtype, seed=2)
    ref_h = h + x
    ref = rms_norm(ref_h, w, 1e-5)
    out = ops.add_rms_norm_(h, x, w, 1e-5)
    assert out.dtype == dtype and out.shape == ref.shape
    if dtype == torch.float32 or DEVICE == "cuda":  # one rounding of the sum, as torch's
        assert torch.equal(h, ref_h)
    else:
        torch.testing.assert_close(h, ref_h, **tolerance(dtype))
    torch.testing.assert_close(out, ref, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_rms_norm_matches_torch(ops, dtype):
    x, w = randn(5, 64, dtype=dtype), randn(64, dtype=dtype, seed=1)
    before = x.clone()
    out = ops.rms_norm(x, w, 1e-6)
    torch.testing.assert_close(out, rms_norm(x, w, 1e-6), **tolerance(dtype))
    assert torch.equal(x, before)


def test_triton_norms_reject_strided_rows(ops):
    x = randn(4, 32, dtype=torch.float32)
    with pytest.raises(ValueError, match="contiguous columns"):
        ops.rms_norm(x.t(), randn(4, dtype=torch.float32), 1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_rotary_in_place_on_fused_qkv(ops, dtype):
    """q (5 heads) and k (3 heads) rotated together as the model does, through a view into
    the fused qkv output (token stride past v), positions from a real rotary table (head dim
    48: a masked half block); v is left alone."""
    cfg = ModelConfig.from_hf(LlamaConfig(hidden_size=240, num_attention_heads=5,
                                          num_key_value_heads=3, max_position_embeddings=512,
                                          rope_theta=10000.0).to_dict())
    heads, kv_heads, dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    table = RotaryTable(cfg, dtype, torch.device(DEVICE))
    positions = torch.tensor([0, 1, 17, 300, 511, 2], device=DEVICE)
    cos, sin = table.at(positions)
    qkv = randn(6, (heads + 2 * kv_heads) * dim, dtype=dtype)
    ref = qkv.clone()
    RotaryTable.rotate(ref[:, : (heads + kv_heads) * dim].view(6, heads + kv_heads, dim),
                       cos, sin)
    v_before = qkv[:, (heads + kv_heads) * dim :].clone()
    ops.rotary_(qkv[:, : (heads + kv_heads) * dim].view(6, heads + kv_heads, dim), cos, sin)
    torch.testing.assert_close(qkv, ref, **tolerance(dtype))
    assert torch.equal(qkv[:, (heads + kv_heads) * dim :], v_before)


def random_bitmask(batch: int, words: int, seed: int = 0) -> torch.Tensor:
    gen = np.random.default_rng(seed)
    bits = gen.integers(-(2**31), 2**31, size=(batch, words), dtype=np.int64).astype(np.int32)
    bits[0] = -1  # a row with everything allowed
    bits[1, 1:] = 0  # a row with only its first 32 tokens' bits
    return torch.from_numpy(bits)


@pytest.mark.parametrize("vocab,words", [(100, 4), (150, 4), (2100, 66)])
def test_triton_bitmask_matches_torch(ops, vocab, words):
    """Disallowed logits become -inf, allowed ones are untouched; columns past 32 * words
    (vocab 150 over 128 bits) are disallowed; 2,100 columns span three program blocks."""
    logits = randn(4, vocab, dtype=torch.float32)
    bitmask = random_bitmask(4, words)
    ref = apply_bitmask_(logits.clone(), bitmask, kernels="torch")
    out = ops.apply_bitmask_(logits.clone(), bitmask.to(DEVICE))
    assert torch.equal(out, ref)
    assert torch.isinf(out[1, 32:]).all() and torch.isfinite(out[0, : min(vocab, 32 * words)]
                                                             ).all()


def test_triton_bitmask_through_the_sampler(ops):
    """The sampler's packed masks (`allowed`, the kernel's path, forced here for the CPU)
    choose what the same masks as bools choose, and the logprobs stay unconstrained."""
    vocab = 70
    logits = randn(3, vocab, dtype=torch.float32)
    bitmask = random_bitmask(3, num_words(vocab), seed=3)
    banned = torch.isinf(apply_bitmask_(torch.zeros(3, vocab), bitmask, kernels="torch"))
    greedy = [SamplingParams(temperature=0.0)] * 3
    ref = sample(logits.clone(), greedy, [None] * 3, banned=banned.to(DEVICE))
    got = sample(logits.clone(), greedy, [None] * 3, allowed=bitmask.to(DEVICE),
                 mask_kernels="triton")
    assert got == ref


def test_triton_output_processor_packed_masks(ops):
    """`allowed_words` (what crosses to a GPU) is `banned_row` packed: stop ids banned below
    min_new_tokens, nothing banned otherwise."""
    from lmnb.runtime.req import Req

    outputs = OutputProcessor(None, {2, 40}, 64, 70, 0, packed_masks=True)  # type: ignore[arg-type]
    params = SamplingParams(min_new_tokens=3, stop_token_ids=[65, 33])
    req = Req(0, [1, 2], params, None, None)  # type: ignore[arg-type]
    words = outputs.allowed_words(req)
    banned = outputs.banned_row(req)
    unpacked = np.unpackbits(words.view(np.uint8), count=70, bitorder="little").astype(bool)
    assert words.dtype == np.int32 and np.array_equal(~unpacked, banned)
    assert set(np.flatnonzero(banned)) == {2, 33, 40, 65}
    req.output_ids = [1, 1, 1]
    assert outputs.allowed_words(req) is None and outputs.banned_row(req) is None


def test_triton_bitmask_of_a_grammar(ops):
    """A real grammar's mask (regex, with EOS and a stop id banned below min_new_tokens) as it
    crosses to a GPU (`allowed_words`), applied by the kernel: the logits the bool mask
    (`banned_row`, the CPU path) leaves, -inf for the rest."""
    from transformers import AutoTokenizer

    from lmnb.runtime import loader
    from lmnb.runtime.grammar import GrammarCompiler
    from lmnb.runtime.req import Req

    tokenizer = AutoTokenizer.from_pretrained(str(loader.resolve(None).folder))
    vocab = len(tokenizer) + 3  # logits a little wider than the tokenizer's vocabulary
    params = SamplingParams(regex=r"(yes|no)[0-9]", min_new_tokens=1,
                            stop_token_ids=[tokenizer.convert_tokens_to_ids("y")])
    grammar = GrammarCompiler(tokenizer, vocab).compile(params).new_state()
    outputs = OutputProcessor(None, {tokenizer.eos_token_id}, 64, vocab, 0,  # type: ignore
                              packed_masks=True)
    req = Req(0, [1, 2], params, None, None, grammar=grammar)  # type: ignore[arg-type]
    banned = torch.from_numpy(outputs.banned_row(req))
    words = torch.from_numpy(outputs.allowed_words(req))
    assert 0 < int((~banned).sum()) < 20  # "yes", "no" and their prefixes, not "y"
    logits = randn(1, vocab, dtype=torch.float32)
    got = ops.apply_bitmask_(logits.clone(), words[None].to(DEVICE))
    assert torch.equal(got, logits.masked_fill(banned.to(DEVICE), float("-inf")))


def test_triton_graph_inputs_from_host_lists():
    """A CUDA graph's step inputs come from the batch's host lists, padded to the bucket:
    the batch's device tensors here live on `meta`, so any read back would raise."""
    cuda_graphs = importlib.import_module("lmnb.runtime.cuda_graphs")
    batch = ForwardBatch.build(True, [3, 1, 4], [9, 300, 2], [[11], [12], [13]],
                               [[21], [22], [23]], [[0], [0], [0]], torch.device("meta"))
    key = cuda_graphs.graph_key(batch, [1, 2, 4, 8])
    assert key == (4, 2)  # 3 rows -> bucket 4; longest context 301 keys -> 2 splits
    inputs = cuda_graphs.graph_inputs(batch, key[0])
    assert inputs.device.type == "cpu" and inputs.tolist() == [
        [11, 12, 13, 0], [9, 300, 2, 0], [21, 22, 23, 0], [3, 1, 4, 3], [10, 301, 3, 1]]
    extend = ForwardBatch.build(False, [3], [0], [[5, 6]], [[7, 8]], [[1]],
                                torch.device("meta"))
    assert cuda_graphs.graph_key(extend, [1, 2, 4, 8]) is None
    assert cuda_graphs.graph_key(batch, [1, 2]) is None  # past the largest bucket


def test_triton_decode_splits_are_power_of_two_buckets():
    """Key splits from the longest context, bucketed: each split of the longest request holds
    (MIN_SPLIT_KEYS / 2, MIN_SPLIT_KEYS] keys until the cap; five values in all."""
    kernels = importlib.import_module("lmnb.runtime.triton_attention")
    keys = kernels.MIN_SPLIT_KEYS
    seen = {kernels.num_splits(n) for n in range(1, 40 * keys, 7)}
    assert seen == {1, 2, 4, 8, 16} and kernels.MAX_SPLITS == 16
    for n in range(keys + 1, 16 * keys + 1, 13):
        splits = kernels.num_splits(n)
        assert keys / 2 < n / splits <= keys
    assert kernels.num_splits(1) == 1 and kernels.num_splits(keys) == 1
    assert kernels.num_splits(keys + 1) == 2 and kernels.num_splits(10**6) == 16


@pytest.mark.gpu
def test_triton_decode_graphs_replay_matches_eager():
    """On a GPU: decode steps replayed from CUDA graphs give the eager forward's logits, for
    batches padded to their bucket, two key-split buckets (contexts up to 701 keys: 4 splits;
    up to 41: 1), and a second replay of a captured graph with new inputs."""
    from transformers import AutoModelForCausalLM

    from lmnb.runtime.cuda_graphs import DecodeGraphs
    from lmnb.runtime.kv_pool import KVPool, ReqToToken
    from lmnb.runtime.model import LlamaModel

    hf_cfg = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024)
    cfg = ModelConfig.from_hf(hf_cfg.to_dict())
    torch.manual_seed(0)
    weights = AutoModelForCausalLM.from_config(hf_cfg).state_dict()
    dev = torch.device("cuda")
    model = LlamaModel(cfg, weights, torch.float32, dev, attention="triton")
    pool = KVPool(cfg.num_layers, 2048, cfg.num_kv_heads, cfg.head_dim, torch.float32, dev)
    pool.k.normal_()  # every slot holds some cached key and value
    pool.v.normal_()
    table = ReqToToken(8, 1024, dev)
    graphs = DecodeGraphs(model, max_batch=8)

    def decode(lens: list[int], token: int) -> None:
        rows = [table.alloc() for _ in lens]
        for row, n in zip(rows, lens):
            table.set(row, 0, pool.alloc(n))
        batch = ForwardBatch.build(True, rows, [n - 1 for n in lens], [[token]] * len(lens),
                                   [table.get(r, n)[-1:] for r, n in zip(rows, lens)],
                                   [[0]] * len(lens), dev)
        eager = model.forward(batch, pool, table.table).clone()
        replayed = graphs.forward(batch, pool, table.table)
        torch.testing.assert_close(replayed, eager, atol=1e-4, rtol=1e-4)  # M=3 vs 4 GEMMs
        for row in rows:
            table.free(row)

    decode([5, 300, 701], token=7)  # bucket 4, 4 splits
    decode([41, 2], token=9)  # bucket 2, 1 split
    decode([600, 3, 9], token=11)  # bucket 4, 4 splits again: a replay with new inputs
    assert sorted(graphs.captured) == [(2, 1), (4, 4)]
