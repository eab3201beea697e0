"""The promise: a cache hit never changes an answer, and neither does the batch.

Bits on tiny random-weight models (every way of splitting a prompt into steps, alone and
batched, gives the same logits), then greedy answers on the real default model, in fp32 and
in bf16: with a cached prefix of every length vs nothing cached, a follow-up turn that reuses
the generated tokens' KV vs a flushed cache, and requests alone vs batched.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from lmnb.runtime import Engine, cpu_kernels, device, loader
from lmnb.runtime.batch import ForwardBatch
from lmnb.runtime.config import ModelConfig
from lmnb.runtime.kv_pool import KVPool, ReqToToken
from lmnb.runtime.model import LlamaModel

CPU = torch.device("cpu")
DTYPES = ["float32", "bfloat16"]
pytestmark = pytest.mark.skipif(cpu_kernels.load() is None,
                                reason=f"exactness needs the native kernels: "
                                       f"{cpu_kernels.status()}")


# ---- bits, tiny random-weight model ---------------------------------------------------------

def _tiny(dtype: torch.dtype, native: cpu_kernels.NativeKernels | None = None,
          runner: str | None = None) -> tuple[LlamaModel, AutoModelForCausalLM]:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=301, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512)
    hf = AutoModelForCausalLM.from_config(cfg).float().eval()
    ours = LlamaModel(ModelConfig.from_hf(cfg.to_dict()), hf.state_dict(), dtype, CPU,
                      native=native or cpu_kernels.load(), runner=runner)
    return ours, hf


def _logits(model: LlamaModel, pool: KVPool, table: ReqToToken,
            reqs: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
    """Run requests [(ids, step_lens)] step by step, all requests' k-th steps batched
    together; every position's logits, per request."""
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
    for row, sl in zip(rows, slots):
        table.free(row)
        pool.free(sl)
    return [torch.cat(o) for o in out]


@pytest.fixture(scope="module", params=["native", "avx2"])
def variant(request) -> cpu_kernels.NativeKernels:
    """The kernels as this CPU builds them, and on an AVX-512 CPU also the AVX2 variant that
    CPUs without AVX-512 run."""
    if request.param == "native":
        return cpu_kernels.load()
    if "avx512f" not in device._cpuinfo():
        pytest.skip("this CPU builds the AVX2 variant natively")
    return cpu_kernels.build(("-mno-avx512f",))


@pytest.mark.parametrize("runner", ["native", "torch"])  # csrc/forward.c, and op by op
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_do_not_depend_on_how_a_prompt_is_split_or_batched(dtype, runner,
                                                                   variant) -> None:
    model, _ = _tiny(dtype, variant, runner)
    pool = KVPool(2, 4096, 2, 32, dtype, CPU)
    table = ReqToToken(8, 512, CPU)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 301, (300,), generator=gen).tolist()
    other = torch.randint(0, 301, (120,), generator=gen).tolist()
    whole = _logits(model, pool, table, [(ids, [300])])[0]
    splits = [[137, 163], [299, 1], [1] * 40 + [260], [33, 67, 1, 1, 198], [256, 44]]
    for steps in splits:
        assert torch.equal(_logits(model, pool, table, [(ids, steps)])[0], whole), steps
    # batched with another request (an extend next to it, then decode steps beside it)
    together = _logits(model, pool, table, [(ids, [100, 200]), (other, [50] + [1] * 70)])
    assert torch.equal(together[0], whole)
    assert torch.equal(together[1], _logits(model, pool, table, [(other, [120])])[0])


@pytest.mark.parametrize("runner", ["native", "torch"])
def test_the_exact_path_matches_transformers(runner) -> None:
    model, hf = _tiny(torch.float32, runner=runner)
    pool = KVPool(2, 1024, 2, 32, torch.float32, CPU)
    ids = torch.randint(0, 301, (90,), generator=torch.Generator().manual_seed(2)).tolist()
    got = _logits(model, pool, ReqToToken(2, 512, CPU), [(ids, [37, 53])])[0]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    assert (got - ref).abs().max().item() <= 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_default_model_logits_do_not_depend_on_how_a_prompt_is_split_or_batched(dtype,
                                                                               variant) -> None:
    """The native runner (csrc/forward.c) on the real model: a prompt in one step, in extends
    over a cached prefix, then in decode steps, alone and beside another request."""
    files = loader.resolve(None)
    cfg = ModelConfig.from_hf(loader.load_config(files.folder))
    model = LlamaModel(cfg, loader.load_weights(files.folder), dtype, CPU,
                       native=variant, runner="native")
    pool = KVPool(cfg.num_layers, 256, cfg.num_kv_heads, cfg.head_dim, dtype, CPU)
    table = ReqToToken(4, 128, CPU)
    gen = torch.Generator().manual_seed(3)
    ids, other = (torch.randint(0, cfg.vocab_size, (n,), generator=gen).tolist() for n in (40, 19))
    whole = _logits(model, pool, table, [(ids, [40])])[0]
    for steps in ([17, 23], [35, 1, 1, 1, 1, 1]):
        assert torch.equal(_logits(model, pool, table, [(ids, steps)])[0], whole), steps
    together = _logits(model, pool, table, [(ids, [9, 31]), (other, [16, 1, 1, 1])])
    assert torch.equal(together[0], whole)
    assert torch.equal(together[1], _logits(model, pool, table, [(other, [19])])[0])


# ---- greedy answers, the default model ------------------------------------------------------

@pytest.fixture(scope="module")
def questions() -> list[str]:
    """The chat prompts the answers are compared on (the runtime benchmark's exactness
    workload uses the same kind, at every split point)."""
    return [
        "What is the capital of France?",
        "Name three colours.",
        "Write one sentence about the sea.",
        "What is 12 times 7?",
    ]


@pytest.fixture(scope="module", params=DTYPES)
def exact_engine(request):
    eng = Engine(dtype=request.param, max_tokens_in_cache=4096)
    assert eng.deterministic, eng.describe()
    yield eng
    eng.shutdown()


def _chat(eng: Engine, question: str) -> list[int]:
    text = eng.tokenizer.hf.apply_chat_template([{"role": "user", "content": question}],
                                                tokenize=False, add_generation_prompt=True)
    return eng.tokenizer.encode(text)


def _answer(eng: Engine, ids: list[int], n: int = 12) -> tuple[list[int], int]:
    result = eng.generate(ids, max_new_tokens=n).result()
    return result.output_ids, result.cached_tokens


def test_a_cached_prefix_of_any_length_gives_the_same_answer(exact_engine, questions) -> None:
    eng = exact_engine
    agree = total = 0
    for question in questions[:2]:
        ids = _chat(eng, question)
        eng.flush_cache()
        want, cached = _answer(eng, ids)
        assert cached == 0
        for split in range(2, len(ids), 3):
            eng.flush_cache()
            eng.generate(ids[:split], max_new_tokens=1).result()  # caches ids[:split]
            got, cached = _answer(eng, ids)
            assert cached >= split
            agree += got == want
            total += 1
    assert agree == total, f"{agree} of {total} split points agree ({eng.dtype})"


def test_a_follow_up_turn_on_cached_generated_tokens_gives_the_same_answer(exact_engine,
                                                                          questions) -> None:
    eng = exact_engine
    eng.flush_cache()
    first = _chat(eng, questions[0])
    reply, _ = _answer(eng, first, 16)  # its KV comes from decode steps, and stays cached
    follow = first + reply + eng.tokenizer.encode(
        "<|im_end|>\n<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n")
    warm, cached = _answer(eng, follow, 16)
    assert cached >= len(first) + len(reply) - 1
    eng.flush_cache()
    cold, cached = _answer(eng, follow, 16)
    assert cached == 0 and warm == cold


def test_alone_and_batched_give_the_same_answers(exact_engine, questions) -> None:
    eng = exact_engine
    prompts = [_chat(eng, q) for q in questions] + [
        eng.tokenizer.encode(t) for t in ("The capital of France is", "def fibonacci(n):",
                                          "Once upon a time", "1, 2, 3, 4,")]
    eng.flush_cache()
    alone = [_answer(eng, p)[0] for p in prompts]
    eng.flush_cache()
    handles = [eng.generate(p, max_new_tokens=12) for p in prompts]
    batched = [h.result().output_ids for h in handles]
    assert sum(a == b for a, b in zip(alone, batched)) == len(prompts)
