"""Parity of lmnb's forward with transformers' own models (fp32)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from lmnb.runtime import loader
from lmnb.runtime.batch import ForwardBatch
from lmnb.runtime.config import ModelConfig
from lmnb.runtime.kv_pool import KVPool, ReqToToken
from lmnb.runtime.model import LlamaModel

CPU = torch.device("cpu")
TINY = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def run_ours(model: LlamaModel, ids: list[int], split: int) -> torch.Tensor:
    """All-position logits, computed as two extends (the second over a cached prefix)."""
    cfg = model.cfg
    pool = KVPool(cfg.num_layers, 512, cfg.num_kv_heads, cfg.head_dim, torch.float32, CPU)
    table = ReqToToken(2, 256, CPU)
    row, slots = table.alloc(), pool.alloc(len(ids))
    table.set(row, 0, slots)
    out = []
    for lo, hi in ((0, split), (split, len(ids))):
        batch = ForwardBatch.build(False, [row], [lo], [ids[lo:hi]], [slots[lo:hi]],
                                   [list(range(hi - lo))], CPU)
        out.append(model.forward(batch, pool, table.table))
    return torch.cat(out)


def tiny_models():
    llama3 = dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    return {
        "llama": LlamaConfig(**TINY, tie_word_embeddings=False),
        "llama-tied-llama3-rope": LlamaConfig(**TINY, tie_word_embeddings=True, **llama3),
        "llama-linear-rope": LlamaConfig(**TINY, rope_scaling={"rope_type": "linear",
                                                               "factor": 2.0}),
        "qwen2": Qwen2Config(**TINY, tie_word_embeddings=False),
        "mistral": MistralConfig(**TINY, sliding_window=None),
    }


@pytest.mark.parametrize("name", list(tiny_models()))
def test_tiny_random_models_match_transformers(name: str) -> None:
    torch.manual_seed(0)
    hf_cfg = tiny_models()[name]
    hf = AutoModelForCausalLM.from_config(hf_cfg).float().eval()
    if name == "qwen2":  # random-init biases are zero; make them matter
        for layer in hf.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    ours = LlamaModel(ModelConfig.from_hf(hf_cfg.to_dict()), hf.state_dict(), torch.float32, CPU)
    ids = torch.randint(0, 101, (90,)).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    got = run_ours(ours, ids, split=37)
    assert (got - ref).abs().max().item() <= 1e-3


@pytest.fixture(scope="module")
def hf_default(hf_fp32):
    """transformers' model of the default model in fp32 (the session's `HFRuntime`'s)."""
    assert hf_fp32.dtype == torch.float32 and hf_fp32.folder == loader.resolve(None).folder
    return hf_fp32.model


def test_default_model_logits_match_transformers(hf_default, tokenizer) -> None:
    files = loader.resolve(None)
    cfg = ModelConfig.from_hf(loader.load_config(files.folder))
    ours = LlamaModel(cfg, loader.load_weights(files.folder), torch.float32, CPU)
    ids = tokenizer.encode("Radix trees share prefixes. The KV cache of a prompt can be reused")
    with torch.no_grad():
        ref = hf_default(torch.tensor([ids])).logits[0]
    assert (run_ours(ours, ids, split=5) - ref).abs().max().item() <= 1e-3


PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
]


def test_greedy_tokens_equal_transformers_generate(engine_fp32, hf_default, tokenizer) -> None:
    handles = [engine_fp32.generate(p, max_new_tokens=32, ignore_eos=True) for p in PROMPTS]
    for prompt, handle in zip(PROMPTS, handles):
        ids = tokenizer.encode(prompt)
        ref = hf_default.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                  min_new_tokens=32, attention_mask=torch.ones(1, len(ids)))
        assert handle.result().output_ids == ref[0, len(ids):].tolist()


def test_lmnb_model_names_the_default_model(monkeypatch, tmp_path) -> None:
    """`$LMNB_MODEL` is what `model=None` loads (a converted folder here); a missing one is
    named in the error."""
    folder = loader.resolve(None).folder
    monkeypatch.setenv("LMNB_MODEL", str(folder))
    files = loader.resolve(None)
    assert files.folder == folder and files.gguf is None and files.name == folder.name
    monkeypatch.setenv("LMNB_MODEL", str(tmp_path / "no-such-model"))
    with pytest.raises(loader.ModelNotFoundError, match="no-such-model"):
        loader.resolve(None)
