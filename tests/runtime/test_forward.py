"""The native runner (csrc/forward.c, a whole step in one C call) against the op-by-op torch
runner and transformers, and how an engine picks it. Its bits against itself (prompt splits,
alone vs batched; tiny and default model, fp32 and bf16, AVX-512 and AVX2 builds) are in
test_exactness.py."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from lmnb.runtime import Engine, cpu_kernels, loader
from lmnb.runtime.batch import ForwardBatch
from lmnb.runtime.config import ModelConfig
from lmnb.runtime.kv_pool import KVPool, ReqToToken
from lmnb.runtime.model import LlamaModel, pick_runner

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(cpu_kernels.load() is None,
                                reason=f"the native runner needs the native kernels: "
                                       f"{cpu_kernels.status()}")
TINY = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def _tiny_configs() -> dict:
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return {
        "llama-untied-llama3-rope": LlamaConfig(**TINY, tie_word_embeddings=False,
                                                rope_scaling=llama3),
        "llama-tied-yarn-rope": LlamaConfig(**TINY, tie_word_embeddings=True, rope_scaling={
            "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
        "qwen2-bias": Qwen2Config(**TINY, tie_word_embeddings=False),
    }


def _prompt_logits(model: LlamaModel, ids: list[int], steps: list[int]) -> torch.Tensor:
    """Every position's logits, the prompt computed in extends of the given lengths."""
    cfg = model.cfg
    pool = KVPool(cfg.num_layers, 512, cfg.num_kv_heads, cfg.head_dim, model.dtype, CPU)
    table = ReqToToken(2, 256, CPU)
    row, slots = table.alloc(), pool.alloc(len(ids))
    table.set(row, 0, slots)
    out, lo = [], 0
    for n in steps:
        batch = ForwardBatch.build(n == 1, [row], [lo], [ids[lo : lo + n]],
                                   [slots[lo : lo + n]], [list(range(n))], CPU)
        out.append(model.forward(batch, pool, table.table))
        lo += n
    return torch.cat(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(_tiny_configs()))
def test_tiny_models_match_the_torch_runner_and_transformers(name, dtype) -> None:
    torch.manual_seed(0)
    hf_cfg = _tiny_configs()[name]
    hf = AutoModelForCausalLM.from_config(hf_cfg).float().eval()
    if name.startswith("qwen2"):  # random-init biases are zero; make them matter
        for layer in hf.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    cfg = ModelConfig.from_hf(hf_cfg.to_dict())
    native, torch_runner = (LlamaModel(cfg, hf.state_dict(), dtype, CPU,
                                       native=cpu_kernels.load(), runner=r)
                            for r in ("native", "torch"))
    assert (native.runner, torch_runner.runner) == ("native", "torch")
    ids = torch.randint(0, 101, (90,), generator=torch.Generator().manual_seed(1)).tolist()
    got = _prompt_logits(native, ids, [37, 50, 1, 1, 1])
    want = _prompt_logits(torch_runner, ids, [37, 50, 1, 1, 1])
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    if dtype == torch.float32:
        assert (got - want).abs().max().item() <= 1e-5
        assert (got - ref).abs().max().item() <= 1e-4
    else:  # the same roundings as the torch runner; its logits are rounded to bf16 too
        assert (got - want).abs().max().item() <= 2e-2
        assert (got - ref).abs().max().item() <= 5e-2


def test_bad_indices_raise_instead_of_writing_astray() -> None:
    torch.manual_seed(0)
    hf_cfg = _tiny_configs()["qwen2-bias"]
    model = LlamaModel(ModelConfig.from_hf(hf_cfg.to_dict()),
                       AutoModelForCausalLM.from_config(hf_cfg).state_dict(), torch.float32, CPU,
                       native=cpu_kernels.load())
    pool = KVPool(2, 16, 2, 16, torch.float32, CPU)
    table = ReqToToken(2, 8, CPU)
    for ids, slots, start in (([101], [1], 0), ([5], [16], 0), ([5], [1], 8)):
        batch = ForwardBatch.build(False, [0], [start], [ids], [slots], [[0]], CPU)
        with pytest.raises(IndexError):
            model.forward(batch, pool, table.table)
    with pytest.raises(ValueError, match="pools"):
        model.forward(ForwardBatch.build(False, [0], [0], [[5]], [[1]], [[0]], CPU),
                      KVPool(3, 16, 2, 16, torch.float32, CPU), table.table)


def test_default_model_logits_match_the_torch_runner_and_transformers(hf_fp32,
                                                                      tokenizer) -> None:
    files = loader.resolve(None)
    cfg = ModelConfig.from_hf(loader.load_config(files.folder))
    weights = loader.load_weights(files.folder)
    ids = tokenizer.encode("Radix trees share prefixes. The KV cache of a prompt can be reused")
    with torch.no_grad():
        ref = hf_fp32.model(torch.tensor([ids])).logits[0]
    logits = {r: _prompt_logits(LlamaModel(cfg, weights, torch.float32, CPU,
                                           native=cpu_kernels.load(), runner=r), ids, [5, 9, 1])
              for r in ("native", "torch")}
    assert (logits["native"] - logits["torch"]).abs().max().item() <= 1e-3
    assert (logits["native"] - ref[: len(logits["native"])]).abs().max().item() <= 1e-3


def test_greedy_tokens_on_the_native_runner_equal_transformers(engine_fp32, hf_fp32,
                                                              tokenizer) -> None:
    """fp32: the engine's greedy tokens are transformers' own (test_model.py compares the
    same on whatever runner the engine runs; here it must be the native one)."""
    assert engine_fp32.model.runner == "native", engine_fp32.describe()
    prompts = ["The capital of France is", "def fibonacci(n):"]
    handles = [engine_fp32.generate(p, max_new_tokens=16, ignore_eos=True) for p in prompts]
    for prompt, handle in zip(prompts, handles):
        ids = tokenizer.encode(prompt)
        ref = hf_fp32.model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                                     min_new_tokens=16, attention_mask=torch.ones(1, len(ids)))
        assert handle.result().output_ids == ref[0, len(ids):].tolist()


def test_the_engine_says_which_runner_and_why(engine) -> None:
    assert engine.describe()["runner"].startswith("native (default")
    native = cpu_kernels.load()
    assert pick_runner(None, native) == ("native", "default: the native kernels are in use")
    assert pick_runner("torch", native)[0] == "torch"
    assert pick_runner(None, None)[0] == "torch"
    with pytest.raises(ValueError, match="needs the native kernels"):
        pick_runner("native", None)
    with pytest.raises(ValueError, match="runner must be"):
        pick_runner("compiled", native)
    with pytest.raises(ValueError, match="needs the native kernels"):
        Engine(runner="native", deterministic=False)
    with pytest.raises(ValueError, match="runner must be"):  # before a missing model is found
        Engine(model="/nonexistent/model", runner="compiled")
