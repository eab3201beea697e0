"""Weight formats: q4 (the GGUF's Q4_1 blocks as they ship), q4q8 (those blocks times int8
activations), int8, bf16, fp32.

The promise holds in each (bits: a prompt split in several ways, alone and batched, gives the
same logits; answers: a cache hit or a batch never changes the default model's greedy output),
q4 reads the file bit-faithfully (de-quantized back, it equals gguf's own de-quantization, q/k
rows in the converted order) and multiplies exactly the fp32 de-quantized weights (the same
bits as the fp32 model), int8 stays within its rounding bound, and bad choices say why.
"""

from __future__ import annotations

import ctypes
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize
from transformers import AutoModelForCausalLM, LlamaConfig

from lmnb.runtime import Engine, cpu_kernels, device, loader
from lmnb.runtime.batch import ForwardBatch
from lmnb.runtime.config import ModelConfig
from lmnb.runtime.kv_pool import KVPool, ReqToToken
from lmnb.runtime.linear import Linears, dequantize_int8, quantize_int8
from lmnb.runtime.loader import GGUFBlocks
from lmnb.runtime.model import LlamaModel

CPU = torch.device("cpu")
FORMATS = ["q4", "q4q8", "int8", "bf16", "fp32"]
NO_KERNELS = os.environ.get("LMNB_NO_KERNELS") == "1"
needs_kernels = pytest.mark.skipif(
    NO_KERNELS or cpu_kernels.load() is None,
    reason=f"the weight formats' exactness is the native kernels' (LMNB_NO_KERNELS=1 or "
           f"none here: {cpu_kernels.status()}); the torch path is tested below")


@pytest.fixture(scope="module", params=["native", "avx2"])
def kernels(request) -> cpu_kernels.NativeKernels:
    """The kernels as this CPU builds them, and on an AVX-512 CPU also the AVX2 variant."""
    if NO_KERNELS or cpu_kernels.load() is None:
        pytest.skip(f"no native kernels: {cpu_kernels.status()}")
    if request.param == "native":
        return cpu_kernels.load()
    if "avx512f" not in device._cpuinfo():
        pytest.skip("this CPU builds the AVX2 variant natively")
    return cpu_kernels.build(("-mno-avx512f",))


def _blocks(kind: str, weight: torch.Tensor) -> GGUFBlocks:
    raw = quantize(weight.float().numpy(), GGMLQuantizationType[kind])
    return GGUFBlocks(kind, tuple(weight.shape), torch.from_numpy(raw))


# ---- the kernel, format by format -----------------------------------------------------------

def _packed(kernels, fmt: str, weight: torch.Tensor, bias: torch.Tensor | None):
    """(packed weight, the values it multiplies by per the format's own definition)."""
    if fmt in ("Q4_1", "Q8_0"):
        b = _blocks(fmt, weight)
        return kernels.pack_gguf(fmt, b.raw, *b.shape, bias), b.dequantize()
    q, scale = quantize_int8(weight)
    return kernels.pack_int8(q, scale, bias), dequantize_int8(q, scale)


@pytest.mark.parametrize("fmt", ["Q4_1", "Q8_0", "int8"])
@pytest.mark.parametrize("out_f,in_f", [(96, 64), (1000, 576), (7, 32)])
def test_quantized_products_are_the_fp32_chain_over_their_values(kernels, fmt, out_f,
                                                                  in_f) -> None:
    gen = torch.Generator().manual_seed(out_f + in_f)
    weight = torch.randn(out_f, in_f, generator=gen)
    bias = torch.randn(out_f, generator=gen)
    x = torch.randn(70, in_f, generator=gen)
    packed, values = _packed(kernels, fmt, weight, bias)
    assert torch.equal(kernels.dequantize(packed), values)  # read back element by element
    full = kernels.linear(x, packed)
    torch.testing.assert_close(full, F.linear(x, values, bias), rtol=1e-5, atol=2e-4)
    # the same bits as fp32 panels holding the de-quantized values, and as the reference
    assert torch.equal(full, kernels.linear(x, kernels.pack(values, bias, torch.float32)))
    assert torch.equal(full, kernels.linear(x, packed, reference=True))
    for rows in (1, 2, 5, 6, 7, 13, 48, 49):
        for start in range(0, len(x) - rows + 1, 23):
            assert torch.equal(kernels.linear(x[start : start + rows], packed),
                               full[start : start + rows]), (rows, start)
    bits = {"Q4_1": 5.0, "Q8_0": 9.0, "int8": 8.0}[fmt]  # a weight, scales included
    panels = -(-out_f // 16) * 16
    assert packed.nbytes * 8 <= bits * panels * in_f + 32 * panels


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
def test_pair_formats_take_bf16_activations_and_are_batch_invariant(kernels, kind) -> None:
    """With bf16 activations, the GGUF's blocks multiply on the CPU's bf16 dot product where
    it has one (d * dot(x, q) + m * sum(x) per group): values as torch's, bits per row."""
    gen = torch.Generator().manual_seed(8)
    b = _blocks(kind, torch.randn(200, 576, generator=gen))
    bias = torch.randn(200, generator=gen)
    packed = kernels.pack_gguf(kind, b.raw, *b.shape, bias, pairs=True)
    assert packed.pairs == kernels.bf16_pairs
    x = torch.randn(50, 576, generator=gen).bfloat16()
    full = kernels.linear(x, packed)
    torch.testing.assert_close(full, F.linear(x.float(), b.dequantize(), bias), rtol=1e-5,
                               atol=2e-4)
    for rows in (1, 2, 3, 5, 6, 7, 13, 49):
        for start in range(0, len(x) - rows + 1, 19):
            assert torch.equal(kernels.linear(x[start : start + rows], packed),
                               full[start : start + rows]), (rows, start)


def _int8_grid(x: torch.Tensor) -> torch.Tensor:
    """x [m, k] rounded per group of 32 to its int8 grid as LMNB_W_Q4_Q8 defines it (fp32:
    dx = amax / 127, qx = rint(x * (127 / amax)), nearest even): dx * qx."""
    g = x.float().reshape(x.shape[0], -1, 32)
    amax = g.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros(()))
    return ((g * inv).round() * (amax / 127)).reshape(x.shape)


@pytest.mark.parametrize("out_f,in_f", [(200, 576), (7, 64), (576, 1536)])
def test_q4_q8_is_the_product_with_x_on_its_int8_grid(kernels, out_f, in_f) -> None:
    """Q4 weights times int8 activations (LMNB_W_Q4_Q8): the fp32 product of the blocks'
    values with x rounded per 32 to its int8 grid (to fp32 rounding), the same bits as the
    element-by-element scalar reference, on vpdpbusd (AVX-512 VNNI), on vpmaddwd (the AVX2
    build, and an AVX-512 build without VNNI), and per row whatever the batch."""
    gen = torch.Generator().manual_seed(out_f)
    weight, bias = torch.randn(out_f, in_f, generator=gen), torch.randn(out_f, generator=gen)
    x = torch.randn(70, in_f, generator=gen)
    x[3, :32] = 0  # a group of zeros: qx = 0, dx = 0
    x[4, 40] = 100.0  # an outlier: the rest of its group rounds to few levels
    b = _blocks("Q4_1", weight)
    packed = kernels.pack_gguf("Q4_1", b.raw, *b.shape, bias, int8_activations=True)
    assert packed.format_name == "q4 (Q4_1) x int8 activations"
    assert torch.equal(kernels.dequantize(packed), b.dequantize())
    full = kernels.linear(x, packed)
    grid = F.linear(_int8_grid(x), b.dequantize(), bias)
    torch.testing.assert_close(full, grid, rtol=1e-5, atol=1e-3)
    assert not torch.allclose(full, F.linear(x, b.dequantize(), bias), rtol=1e-5, atol=1e-3)
    assert torch.equal(full, kernels.linear(x, packed, reference=True))
    assert kernels.q8_dot == ("avx2" in device._cpuinfo())  # a vector path on every AVX2 CPU
    if "avx512_vnni" in device._cpuinfo():  # vpmaddwd in the AVX-512 build of this CPU
        no_vnni = cpu_kernels.build(("-mno-avx512vnni",))
        assert torch.equal(full, no_vnni.linear(x, no_vnni.pack_gguf(
            "Q4_1", b.raw, *b.shape, bias, int8_activations=True)))
    for rows in (1, 2, 3, 7, 8, 9, 17, 49):
        for start in range(0, len(x) - rows + 1, 19):
            assert torch.equal(kernels.linear(x[start : start + rows], packed),
                               full[start : start + rows]), (rows, start)


@pytest.mark.parametrize("fmt", ["Q4_1", "Q8_0", "int8", "bf16", "fp32"])
def test_products_round_to_bf16_inside_as_after(kernels, fmt) -> None:
    """What the forward of a bf16 model calls: the product with its outputs rounded to bf16 by
    the work items (lmnb_linear_w_round) equals the product rounded afterwards, bit for bit,
    with a bias and a last panel cut short (200 outputs), over row counts around the tiles."""
    gen = torch.Generator().manual_seed(12)
    weight, bias = torch.randn(200, 576, generator=gen), torch.randn(200, generator=gen)
    if fmt in ("bf16", "fp32"):
        packs = [kernels.pack(weight, bias, torch.bfloat16 if fmt == "bf16" else torch.float32)]
    elif fmt == "int8":
        packs = [_packed(kernels, fmt, weight, bias)[0]]
    else:
        b = _blocks(fmt, weight)
        packs = [kernels.pack_gguf(fmt, b.raw, *b.shape, bias, pairs=p) for p in (False, True)]
        if fmt == "Q4_1":
            packs.append(kernels.pack_gguf(fmt, b.raw, *b.shape, bias, int8_activations=True))
    for packed in packs:
        for rows in (1, 3, 8, 9, 97, 130):
            x = torch.randn(rows, 576, generator=gen).bfloat16().float()
            want = kernels.linear(x, packed).bfloat16().float()
            got = torch.empty(rows, 200)
            assert kernels._linear_w_round(ctypes.byref(packed.descriptor()), x.data_ptr(), rows,
                                           got.data_ptr(), torch.get_num_threads(), 1) == 0
            assert torch.equal(got, want), (packed.format_name, rows)


def test_int8_stays_within_its_rounding_bound() -> None:
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(300, 200, generator=gen) * torch.rand(300, 1, generator=gen)
    weight[7] = 0  # a zero row keeps a finite scale
    q, scale = quantize_int8(weight)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    err = (dequantize_int8(q, scale) - weight).abs()
    assert bool((err <= scale[:, None] / 2 * (1 + 1e-5)).all())
    assert torch.equal(scale, torch.where(weight.abs().amax(1) > 0, weight.abs().amax(1) / 127,
                                          torch.ones(300)))


def test_blocks_that_do_not_fit_are_refused(kernels) -> None:
    b = _blocks("Q4_1", torch.randn(16, 64))
    with pytest.raises(ValueError, match="do not hold"):
        kernels.pack_gguf("Q4_1", b.raw, 16, 96)
    with pytest.raises(ValueError, match="no native format"):
        kernels.pack_gguf("Q5_0", b.raw, 16, 64)


# ---- loading as it ships (the default model's GGUF) -----------------------------------------

@pytest.fixture(scope="module")
def default_files() -> loader.ModelFiles:
    try:
        files = loader.resolve(None)
    except loader.ModelNotFoundError as err:
        pytest.skip(str(err))
    assert files.gguf is not None
    return files


@pytest.fixture(scope="module")
def default_blocks(default_files) -> dict[str, GGUFBlocks]:
    cfg = ModelConfig.from_hf(loader.load_config(default_files.folder))
    return loader.gguf_blocks(default_files.gguf, cfg.num_heads, cfg.num_kv_heads)


@pytest.fixture(scope="module")
def default_dense(default_files) -> dict[str, torch.Tensor]:
    return loader.load_weights(default_files.folder)


def test_the_default_gguf_ships_q4_1_layers_and_a_q8_0_embedding(default_blocks) -> None:
    kinds = {name: b.kind for name, b in default_blocks.items()}
    assert kinds.pop("model.embed_tokens.weight") == "Q8_0"  # tied: the lm_head too
    assert set(kinds.values()) == {"Q4_1"} and len(kinds) == 30 * 7


@needs_kernels
def test_q4_load_is_bit_faithful_to_the_file(default_files, default_blocks,
                                             default_dense) -> None:
    """Packed, then de-quantized back element by element (the C reference), the weights equal
    gguf's own de-quantization of the file's rows, and the converted model's weights (q/k rows
    un-permuted, as transformers' conversion does)."""
    native = cpu_kernels.load()
    reader = GGUFReader(default_files.gguf)
    raw = {t.name: t for t in reader.tensors}
    cfg = ModelConfig.from_hf(loader.load_config(default_files.folder))
    for gguf_name, name in [("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
                            ("blk.3.attn_k.weight", "model.layers.3.self_attn.k_proj.weight"),
                            ("blk.29.ffn_down.weight", "model.layers.29.mlp.down_proj.weight"),
                            ("token_embd.weight", "model.embed_tokens.weight")]:
        b = default_blocks[name]
        got = native.dequantize(native.pack_gguf(b.kind, b.raw, *b.shape))
        t = raw[gguf_name]
        file_values = torch.from_numpy(dequantize(np.array(t.data), t.tensor_type))
        if "q_proj" in name or "k_proj" in name:  # the file's rotary row order
            heads = cfg.num_heads if "q_proj" in name else cfg.num_kv_heads
            file_values = file_values[loader._unpermute_rows(b.shape[0], heads)]
        assert torch.equal(got, file_values), name
        assert torch.equal(got, default_dense[name]), name


def _logits(model: LlamaModel, reqs: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
    """Requests [(ids, step_lens)], the k-th steps of all batched together: every position's
    logits, per request."""
    cfg = model.cfg
    pool = KVPool(cfg.num_layers, 1024, cfg.num_kv_heads, cfg.head_dim, model.dtype, CPU)
    table = ReqToToken(4, 512, CPU)
    rows = [table.alloc() for _ in reqs]
    slots = [pool.alloc(len(ids)) for ids, _ in reqs]
    for row, sl in zip(rows, slots):
        table.set(row, 0, sl)
    out: list[list[torch.Tensor]] = [[] for _ in reqs]
    starts = [0] * len(reqs)
    for k in range(max(len(steps) for _, steps in reqs)):
        live = [i for i, (_, steps) in enumerate(reqs) if k < len(steps)]
        spans = [(starts[i], starts[i] + reqs[i][1][k]) for i in live]
        batch = ForwardBatch.build(
            all(hi - lo == 1 for lo, hi in spans), [rows[i] for i in live],
            [lo for lo, _ in spans], [reqs[i][0][lo:hi] for i, (lo, hi) in zip(live, spans)],
            [slots[i][lo:hi] for i, (lo, hi) in zip(live, spans)],
            [list(range(hi - lo)) for lo, hi in spans], CPU)
        logits = model.forward(batch, pool, table.table)
        at = 0
        for i, (lo, hi) in zip(live, spans):
            out[i].append(logits[at : at + hi - lo])
            at += hi - lo
            starts[i] = hi
    return [torch.cat(o) for o in out]


SPLITS = [[0.5], [-1], [1, 1, 1, 1, 1, 1], [7, 20, 1, 1]]  # step lengths, the rest last


def _check_splits(model: LlamaModel, ids: list[int], other: list[int],
                  splits: list[list[float]] = SPLITS) -> torch.Tensor:
    """A prompt's logits split into steps in several ways, then beside another request (an
    extend, then decode steps): the same bits as the prompt in one step, and as alone."""
    n = len(ids)
    whole = _logits(model, [(ids, [n])])[0]
    for split in splits:
        steps = [int(s * n) if isinstance(s, float) else s % n for s in split]
        steps.append(n - sum(steps))
        assert torch.equal(_logits(model, [(ids, steps)])[0], whole), steps
    together = _logits(model, [(ids, [n // 3, n - n // 3]),
                               (other, [len(other) // 2] + [1] * (len(other) - len(other) // 2))])
    assert torch.equal(together[0], whole)
    assert torch.equal(together[1], _logits(model, [(other, [len(other)])])[0])
    return whole


@needs_kernels
@pytest.mark.parametrize("fmt", ["q4", "q4q8", "int8"])
def test_the_default_model_keeps_the_promise_in_every_format(fmt, default_files, default_blocks,
                                                             default_dense) -> None:
    """bf16 activations (the default dtype where the CPU has bf16), bits per split/batch.
    (bf16 and fp32 weights in their own dtype: test_exactness, on the default model; every
    format in both dtypes: the tiny models below.)"""
    cfg = ModelConfig.from_hf(loader.load_config(default_files.folder))
    model = LlamaModel(cfg, default_dense, torch.bfloat16, CPU, native=cpu_kernels.load(),
                       weights_format=fmt, blocks=default_blocks if fmt != "int8" else None)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, cfg.vocab_size, (30,), generator=gen).tolist()
    other = torch.randint(0, cfg.vocab_size, (10,), generator=gen).tolist()
    _check_splits(model, ids, other, [[0.5], [1, 1, 1, 1]])


@needs_kernels
def test_q4_gives_the_converted_fp32_models_bits(default_files, default_blocks,
                                                 default_dense) -> None:
    """The Q4 model multiplies exactly the converted (de-quantized) weights, rows in the same
    order: its logits are the fp32-weight model's, bit for bit."""
    cfg = ModelConfig.from_hf(loader.load_config(default_files.folder))
    native = cpu_kernels.load()
    ids = torch.randint(0, cfg.vocab_size, (24,),
                        generator=torch.Generator().manual_seed(4)).tolist()
    got = {fmt: _logits(LlamaModel(cfg, default_dense, torch.float32, CPU, native=native,
                                   weights_format=fmt, blocks=default_blocks),
                        [(ids, [16, 1, 1, 6])])[0] for fmt in ("q4", "fp32")}
    assert torch.equal(got["q4"], got["fp32"])


# ---- tiny random models: every format, both dtypes, both kernel variants ---------------------

def _tiny_quantized(fmt: str, dtype: torch.dtype,
                    native) -> tuple[LlamaModel, LlamaModel | None]:
    """(the model in `fmt`, the same values in fp32 weights, q4 only): Q4_1 layers, a Q8_0
    lm_head."""
    torch.manual_seed(0)
    hf_cfg = LlamaConfig(vocab_size=301, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False)
    dense = AutoModelForCausalLM.from_config(hf_cfg).float().state_dict()
    blocks = {name: _blocks("Q8_0" if name == "lm_head.weight" else "Q4_1", w)
              for name, w in dense.items() if w.dim() == 2 and "embed" not in name}
    dense.update({name: b.dequantize() for name, b in blocks.items()})  # the file's values
    cfg = ModelConfig.from_hf(hf_cfg.to_dict())
    model = LlamaModel(cfg, dense, dtype, CPU, native=native, weights_format=fmt, blocks=blocks)
    fp32 = (LlamaModel(cfg, dense, dtype, CPU, native=native, weights_format="fp32")
            if fmt == "q4" else None)
    return model, fp32


@pytest.fixture
def one_thread():
    """Tiny products on one thread: a thread's share never changes a bit (the default model
    runs on all of them above), and on a busy machine two threads wait at every one of a
    tiny step's many barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_models_keep_the_promise_in_every_format(kernels, fmt, dtype, one_thread) -> None:
    model, fp32 = _tiny_quantized(fmt, dtype, kernels)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 301, (120,), generator=gen).tolist()
    other = torch.randint(0, 301, (50,), generator=gen).tolist()
    whole = _check_splits(model, ids, other)
    if fp32 is not None and dtype == torch.float32:  # the fp32 weights' bits (bf16: pairs)
        assert torch.equal(whole, _logits(fp32, [(ids, [120])])[0])


# ---- choices and errors ---------------------------------------------------------------------

def test_a_bad_weights_value_says_what_to_choose(monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"unknown weights 'q5'.*q4.*int8.*bf16.*fp32"):
        Engine(weights="q5")
    monkeypatch.setenv("LMNB_WEIGHTS", "int4")
    with pytest.raises(ValueError, match="unknown LMNB_WEIGHTS 'int4'"):
        device.pick_weights(None, {"Q4_1"}, True, torch.float32, "m")


def test_the_weight_format_is_chosen_and_explained(monkeypatch) -> None:
    monkeypatch.delenv("LMNB_WEIGHTS", raising=False)
    fmt, why = device.pick_weights(None, {"Q4_1", "Q8_0"}, True, torch.bfloat16, "m")
    assert fmt == "q4" and "Q4_1" in why
    fmt, why = device.pick_weights(None, {"Q4_1", "Q8_0"}, True, torch.bfloat16, "m",
                                   int8_dot=True)
    assert fmt == "q4q8" and "integer dot product" in why
    assert device.pick_weights(None, set(), True, torch.bfloat16, "m", int8_dot=True)[0] == "bf16"
    assert device.pick_weights(None, set(), True, torch.bfloat16, "m")[0] == "bf16"
    assert device.pick_weights(None, set(), True, torch.float32, "m")[0] == "fp32"
    assert device.pick_weights(None, {"Q4_1"}, False, torch.float32, "m")[0] == "fp32"
    fmt, why = device.pick_weights("int8", set(), False, torch.float32, "m")
    assert fmt == "int8" and "de-quantized into float32" in why
    assert device.pick_weights("q4q8", {"Q4_1"}, True, torch.float32, "m")[0] == "q4q8"
    with pytest.raises(ValueError, match="q4q8.*native CPU kernels.*choose q4"):
        device.pick_weights("q4q8", {"Q4_1"}, False, torch.float32, "m")
    monkeypatch.setenv("LMNB_WEIGHTS", "INT8")
    assert device.pick_weights(None, {"Q4_1"}, True, torch.float32, "m") == (
        "int8", "LMNB_WEIGHTS is set")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, default_files) -> str:
    """A Hugging Face folder with random weights and the default model's tokenizer."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny")
    hf_cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(0)
    tensors = AutoModelForCausalLM.from_config(hf_cfg).state_dict()
    tensors.pop("lm_head.weight", None)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    hf_cfg.save_pretrained(folder)
    for f in default_files.folder.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, folder / f.name)
    return str(folder)


def test_q4_on_a_model_without_q4_blocks_says_why(tiny_folder) -> None:
    with pytest.raises(ValueError, match="needs a model file that ships Q4_1 blocks"):
        Engine(model=tiny_folder, weights="q4")
    with pytest.raises(ValueError, match="'q4q8' needs a model file that ships Q4_1 blocks"):
        Engine(model=tiny_folder, weights="q4q8")
    with pytest.raises(ValueError, match="Q4_1 blocks"):
        Linears({}, torch.float32, CPU, fmt="q4")


def test_int8_on_a_model_without_quantized_blocks(tiny_folder) -> None:
    with Engine(model=tiny_folder, weights="int8", max_tokens_in_cache=256) as eng:
        info = eng.describe()
        assert info["weights"] == "int8"
        assert eng.generate("Hello", max_new_tokens=3).result().completion_tokens == 3
        if eng.deterministic:
            assert info["weight_formats"] == "int8; lm_head int8"


def test_without_the_kernels_q4_and_int8_run_de_quantized_on_torch(default_blocks,
                                                                   default_dense) -> None:
    """The torch path multiplies the format's values in the activations' dtype."""
    names = ["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"]
    x = torch.randn(3, 576, generator=torch.Generator().manual_seed(6))
    make = dict(weights=default_dense, dtype=torch.float32, device=CPU, pack=False)
    q4 = Linears(**make, fmt="q4", blocks=default_blocks)(names)
    assert q4.path == "torch" and q4.format == "float32"
    values = GGUFBlocks.cat([default_blocks[n] for n in names]).dequantize()
    torch.testing.assert_close(q4(x), x @ values.T)
    int8 = Linears(**make, fmt="int8")(names)
    want = dequantize_int8(*quantize_int8(torch.cat([default_dense[n] for n in names])))
    torch.testing.assert_close(int8(x), x @ want.T)


def test_the_engine_says_which_weights_it_runs(default_files) -> None:
    with Engine(weights="q4", deterministic=False, max_tokens_in_cache=256) as eng:
        info = eng.describe()
        assert info["weights"] == "q4" and "de-quantized" in info["weights_reason"]
        assert eng.generate("The capital of France is", max_new_tokens=2).result().output_ids
