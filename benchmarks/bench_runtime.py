"""Runtime benchmark: lmnb's engine against transformers' own model, side by side in one run,
in fp32 and bf16, with lmnb's batch-invariant kernels and with its torch paths.

lmnb runs in up to four configurations, {fp32, bf16} x {exact, torch}:
  exact   Engine(deterministic=True): the native batch-invariant kernels (csrc/linear.c,
          csrc/attention.c), under which a cache hit or the batch never changes an answer
  torch   Engine(deterministic=False): the torch paths (oneDNN-packed fp32 linears / F.linear
          in bf16, SDPA extend attention, gather + cascade decode attention)
and transformers runs in each dtype as the peer. The CPU, whether it has native bf16, the
default configuration and every engine's describe() are printed and written with the results.

Workloads (issues 2 and 11), all on the default model, the same inputs for every system:
  prefill     tokens/s over a few distinct ~512-token prompts (lmnb: max_new_tokens=1, all
              submitted at once; transformers: one batched forward with logits_to_keep=1);
              every configuration and transformers in each dtype, timed in turns
  decode      new tokens/s at batch 1, 8 and 32 (short distinct prompts, a fixed number of new
              tokens; lmnb submits the batch concurrently, transformers runs `generate` on the
              left-padded batch); every configuration and transformers, timed in turns
  shared      64 requests sharing a 1,000-token prefix + 20 distinct tokens, 32 new tokens each,
              in one configuration (the machine's default where --dtypes/--configs select it,
              else the first selected; the row says which): lmnb with the radix cache,
              lmnb without it, and (for scale) transformers one request at a time, on a sample
  noshare     the same sizes with no shared prefix at all: the cost of the cache when it cannot
              hit (the same configuration)
  longdecode  decode at batch 8 over distinct ~2,000-token contexts (a multi-turn chat's
              shape), prompts prefilled beforehand: every configuration in turns, exact
              kernels vs torch paths per dtype
  exactness   greedy answers with vs without a cached prefix (chat prompts split at several
              points) and alone vs batched, per configuration: "k/n agree" (a compact
              tests/runtime/test_exactness.py); not timed

Prints a rich table (and Markdown with --markdown), then the configurations side by side, and
writes benchmarks/results/<name>.json. Times are the best of the repeats (noise on a shared
machine only adds time); systems that are compared are timed in turns. Targets are reported
as PASS/FAIL; the exit status ignores them.

    python benchmarks/bench_runtime.py [--quick] [--markdown] [--repeats N] [--name NAME]
        [--only prefill,decode,shared,noshare,longdecode,exactness]
        [--dtypes float32,bfloat16] [--configs exact,torch]

--quick (small sizes, results/runtime_quick.json) takes ~1.5 min on a 2-core machine; the full
size (results/runtime.json) ~50 min there, most of it shared (~15 min), decode (~12 min) and
exactness (~10 min, 143 split points x 4 configurations); --only splits it into parts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, when run as a script

from common import (  # noqa: E402
    Row,
    SyntheticText,
    Timing,
    fmt,
    log,
    machine_info,
    markdown_grid,
    markdown_table,
    parse_only,
    print_grid,
    print_table,
    time_interleaved,
    time_once,
    write_json,
)

from lmnb.runtime import Engine, GenerateResult, cpu_kernels  # noqa: E402
from lmnb.runtime import loader as lmnb_loader  # noqa: E402
from lmnb.runtime.device import (  # noqa: E402
    cpu_has_native_bf16,
    cpu_name,
    parse_dtype,
    pick_device,
    pick_dtype,
)
from lmnb.runtime.tokenizer import Tokenizer  # noqa: E402

WORKLOADS = ("prefill", "decode", "shared", "noshare", "longdecode", "exactness")
DTYPES = ("float32", "bfloat16")
CONFIGS = ("exact", "torch")  # Engine(deterministic=True) / Engine(deterministic=False)
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
TARGETS = {"prefill": 1.3, "decode32": 3.0, "shared": 5.0, "noshare": 1.03}

Key = tuple[str, str]  # (dtype, config): one lmnb configuration


@dataclass(frozen=True)
class Sizes:
    prefill_prompts: int = 4
    prefill_len: int = 512
    decode_batches: tuple[int, ...] = (1, 8, 32)
    decode_prompt_len: int = 32
    decode_new: int = 64
    shared_requests: int = 64
    shared_prefix_len: int = 1000
    shared_suffix_len: int = 20
    shared_new: int = 32
    hf_sequential_sample: int = 4  # sequential transformers is timed on this many, scaled
    repeats: int = 3  # prefill, decode, long decode, and lmnb with the cache on the shared prefix
    slow_repeats: int = 1  # the slow baselines of the shared-prefix workload
    noshare_requests: int = 32  # no shared prefix: the cache's own cost, at a size that runs
    noshare_prompt_len: int = 256  # in about a minute per system (64 x 1,020 takes ~8 min)
    noshare_repeats: int = 2  # cache on/off in turns; the overhead is a few percent at most
    max_tokens_in_cache: int = 70_000  # > 64 x (1020 + 32): no request waits for KV
    long_requests: int = 8
    long_prompt_len: int = 2000
    long_new: int = 64
    exact_questions: int = 4  # chat prompts, each split at every exact_split_step-th token
    exact_split_step: int = 1  # 1: every split point (143 on the default model)
    exact_batch: int = 16  # prompts answered alone, then all at once
    exact_new: int = 12  # greedy tokens per answer (EOS may end one sooner)

    @property
    def matrix_cache(self) -> int:
        """KV slots of the configurations' engines: enough for prefill, decode, long decode
        (its prompts stay cached between runs) and exactness, with no eviction."""
        return 1024 + max(self.prefill_prompts * (self.prefill_len + 1),
                          max(self.decode_batches) * (self.decode_prompt_len + self.decode_new),
                          self.long_requests * (self.long_prompt_len + self.long_new),
                          self.exact_batch * 128)


FULL = Sizes()
QUICK = Sizes(prefill_prompts=2, prefill_len=64, decode_prompt_len=8, decode_new=4,
              shared_requests=8, shared_prefix_len=100, shared_suffix_len=8, shared_new=4,
              hf_sequential_sample=1, repeats=2, slow_repeats=1, noshare_requests=8,
              noshare_prompt_len=64, noshare_repeats=2,
              max_tokens_in_cache=4_000, long_requests=2, long_prompt_len=200, long_new=4,
              exact_questions=2, exact_split_step=5, exact_batch=8, exact_new=8)

# exactness prompts: chat questions (the first four are tests/runtime/test_exactness.py's)
# and plain completions; the alone-vs-batched prompts alternate between the two
QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write one sentence about the sea.",
    "What is 12 times 7?",
    "Who wrote Romeo and Juliet?",
    "Give me a synonym for happy.",
    "How many legs does a spider have?",
    "Translate 'good morning' into French.",
]
COMPLETIONS = ["The capital of France is", "def fibonacci(n):", "Once upon a time",
               "1, 2, 3, 4,", "The best way to learn a language is", "import numpy as np\n",
               "Dear Sir or Madam,", "In 1969, the first"]


def short(dtype: str) -> str:
    return SHORT.get(dtype, dtype)


def lm_name(key: Key) -> str:
    return f"lmnb {short(key[0])} {key[1]}"


def hf_name(dtype: str) -> str:
    return f"transformers {short(dtype)}"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---- the systems ----------------------------------------------------------------------------


class Systems:
    """lmnb in each configuration, lmnb without the cache (shared/noshare's configuration) and
    transformers in each dtype, each made on first use and kept."""

    def __init__(self, sizes: Sizes, dtypes: list[str], configs: list[str],
                 big_main: bool) -> None:
        self.sizes = sizes
        self.has_kernels = cpu_kernels.load() is not None
        self.kernels_status = cpu_kernels.status()
        if "exact" in configs and not self.has_kernels:
            log(f"no exact configuration: {self.kernels_status}")
            configs = [c for c in configs if c != "exact"]
            if not configs:
                raise SystemExit("nothing to run: the exact kernels are unavailable")
        self.dtypes, self.configs = dtypes, configs
        self.keys: list[Key] = [(d, c) for d in dtypes for c in configs]
        dtype, self.default_reason = pick_dtype(None, pick_device(None), self.has_kernels)
        self.default: Key = (dtype_name(dtype), "exact" if self.has_kernels else "torch")
        # shared / noshare run in one configuration: the default where it is selected
        self.main: Key = self.default if self.default in self.keys else self.keys[0]
        self.big_main = big_main  # that engine gets the big cache
        files = lmnb_loader.resolve(None)
        self.folder, self.model_name = files.folder, files.name
        self.tok = Tokenizer(self.folder)
        self.tokenizer = self.tok.hf
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self._engines: dict[Key, Engine] = {}
        self._lm_nocache: Engine | None = None
        self._hf: dict[str, Any] = {}

    def engine(self, key: Key) -> Engine:
        if key not in self._engines:
            cache = self.sizes.matrix_cache
            if self.big_main and key == self.main:
                cache = max(cache, self.sizes.max_tokens_in_cache)
            self._engines[key] = self._make(key, cache, lm_name(key))
        return self._engines[key]

    def _make(self, key: Key, cache: int, name: str, **kwargs: Any) -> Engine:
        started = time.perf_counter()
        engine = Engine(dtype=key[0], deterministic=key[1] == "exact",
                        max_tokens_in_cache=cache, **kwargs)
        warm_lmnb(engine)
        log(f"  [{name}: loaded and warmed in {time.perf_counter() - started:.1f} s]")
        return engine

    @property
    def lm(self) -> Engine:
        """The configuration of shared and noshare: the default one where selected."""
        return self.engine(self.main)

    @property
    def lm_nocache(self) -> Engine:
        if self._lm_nocache is None:
            self._lm_nocache = self._make(
                self.main, max(self.sizes.matrix_cache, self.sizes.max_tokens_in_cache),
                f"{lm_name(self.main)}, no cache", disable_radix_cache=True)
        return self._lm_nocache

    def hf(self, dtype: str) -> Any:
        if dtype not in self._hf:
            from transformers import AutoModelForCausalLM

            started = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(str(self.folder),
                                                         dtype=parse_dtype(dtype))
            self._hf[dtype] = model.eval()
            warm_hf(self._hf[dtype], self.pad_id)
            log(f"  [{hf_name(dtype)}: loaded and warmed in "
                f"{time.perf_counter() - started:.1f} s]")
        return self._hf[dtype]

    @property
    def hf_attention(self) -> str | None:
        for model in self._hf.values():
            return str(getattr(model.config, "_attn_implementation", "?"))
        return None

    def describe(self) -> dict[str, dict[str, Any]]:
        """Every engine made so far: its describe() (dtype, kernels, paths, and why)."""
        out = {lm_name(k): e.describe() for k, e in self._engines.items()}
        if self._lm_nocache is not None:
            out[f"{lm_name(self.main)}, no cache"] = self._lm_nocache.describe()
        return out

    def shutdown(self) -> None:
        for engine in [*self._engines.values(), self._lm_nocache]:
            if engine is not None:
                engine.shutdown()


def lm_run(engine: Engine, prompts: list[list[int]], new_tokens: int) -> list[GenerateResult]:
    """Submit every prompt at once, wait for all; exactly `new_tokens` greedy tokens each."""
    handles = [engine.generate(p, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               ignore_eos=True) for p in prompts]
    results = [h.result() for h in handles]
    bad = [r.completion_tokens for r in results if r.completion_tokens != new_tokens]
    if bad:
        raise RuntimeError(f"lmnb produced {bad[:4]} tokens, expected {new_tokens}")
    return results


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


@torch.inference_mode()
def hf_generate(model: Any, prompts: list[list[int]], new_tokens: int,
                pad_id: int) -> list[list[int]]:
    """transformers `generate` on the left-padded batch, greedy, exactly `new_tokens` each."""
    ids, mask = left_pad(prompts, pad_id)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id,
                         temperature=None, top_p=None, top_k=None)
    new = out[:, ids.shape[1]:]
    if new.shape[1] != new_tokens:
        raise RuntimeError(f"transformers produced {new.shape[1]} tokens, expected {new_tokens}")
    return new.tolist()


@torch.inference_mode()
def hf_prefill(model: Any, prompts: list[list[int]], pad_id: int) -> torch.Tensor:
    """One batched forward that keeps the KV cache and computes only the last logits."""
    ids, mask = left_pad(prompts, pad_id)
    return model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits


def warm_lmnb(engine: Engine) -> None:
    ids = list(range(1000, 1100))
    lm_run(engine, [ids, ids[::-1]], 4)
    engine.flush_cache()


def warm_hf(model: Any, pad_id: int) -> None:
    ids = list(range(1000, 1100))
    hf_generate(model, [ids, ids[::-1]], 4, pad_id)
    hf_prefill(model, [ids], pad_id)


def stats_delta(engine: Engine, fn: Any, label: str | None = None,
                ) -> tuple[float, Any, dict[str, float]]:
    """Run `fn` once (timed) and return the change in the engine's cumulative counters."""
    before = engine.stats()
    seconds, out = time_once(fn, label)
    after = engine.stats()
    keys = ("prompt_tokens", "cached_tokens", "computed_tokens", "extend_tokens",
            "decode_steps", "extend_steps", "generated_tokens")
    delta = {k: after[k] - before[k] for k in keys}
    delta["hit_rate"] = delta["cached_tokens"] / max(delta["prompt_tokens"], 1)
    decode_tokens = delta["computed_tokens"] - delta["extend_tokens"]
    delta["mean_decode_batch"] = decode_tokens / max(delta["decode_steps"], 1)
    return seconds, out, delta


def same_outputs(lm_results: list[GenerateResult], hf_outputs: list[list[int]]) -> float:
    """Fraction of requests whose greedy tokens agree (a check that both did the same work;
    fp32 near-ties may legitimately diverge late)."""
    same = sum(r.output_ids == h for r, h in zip(lm_results, hf_outputs))
    return same / max(len(hf_outputs), 1)


def shared_prompts(text: SyntheticText, sz: Sizes) -> list[list[int]]:
    prefix = text.ids(sz.shared_prefix_len)
    suffixes = text.distinct(sz.shared_requests, sz.shared_suffix_len)
    return [prefix + s for s in suffixes]


def time_lmnb(engine: Engine, prompts: list[list[int]], new_tokens: int, repeats: int,
              label: str) -> tuple[Timing, dict[str, float]]:
    """Best of `repeats` runs from a flushed cache; the counters of the last run."""
    timing, delta = Timing(), {}
    for _ in range(repeats):
        engine.flush_cache()
        seconds, _, delta = stats_delta(engine, lambda: lm_run(engine, prompts, new_tokens),
                                        label)
        timing.seconds.append(seconds)
    engine.flush_cache()
    return timing, delta


def time_hf_shared(sy: Systems, prompts: list[list[int]], sz: Sizes,
                   ) -> tuple[float, str, dict[str, Any]]:
    """transformers on the shared-prefix workload, one request at a time (it has no prefix
    reuse, so its time is linear in the requests): timed on a sample and scaled. A padded batch
    of 64 x 1,052 tokens is slower still and took most of the benchmark's time, so it is not
    run."""
    hf = sy.hf(sy.main[0])
    sample = prompts[: sz.hf_sequential_sample]
    seq_seconds, _ = time_once(lambda: [hf_generate(hf, [p], sz.shared_new, sy.pad_id)
                                        for p in sample],
                               f"shared transformers sequential x{len(sample)}")
    sequential = seq_seconds * len(prompts) / len(sample)
    data = {"sequential_sample": len(sample), "sequential_sample_s": seq_seconds,
            "sequential_scaled_s": sequential}
    return sequential, f"sequential, timed on {len(sample)} of {len(prompts)}", data


# ---- workloads ------------------------------------------------------------------------------


def matrix_fns(sy: Systems, lm_fn: Callable[[str, Engine], Callable[[], Any]],
               hf_fn: Callable[[str, Any], Callable[[], Any]],
               ) -> tuple[dict[str, Callable[[], Any]], Callable[[str], None]]:
    """Every configuration and transformers in every dtype, fp32 first, for time_interleaved;
    and its setup, which flushes the cache of the lmnb engine about to run."""
    fns: dict[str, Callable[[], Any]] = {}
    engines: dict[str, Engine] = {}
    for dtype in sy.dtypes:
        for config in sy.configs:
            name = lm_name((dtype, config))
            engines[name] = sy.engine((dtype, config))
            fns[name] = lm_fn(name, engines[name])
        fns[hf_name(dtype)] = hf_fn(hf_name(dtype), sy.hf(dtype))

    def setup(name: str) -> None:
        if name in engines:
            engines[name].flush_cache()

    return fns, setup


def matrix_rows(sy: Systems, workload: str, metric: str, unit: str, tps: dict[str, float],
                target: float | None = None, notes: dict[str, str] | None = None,
                ) -> list[Row]:
    """A row per configuration: its throughput against transformers in the same dtype; the
    exact rows also say exact / torch paths."""
    rows = []
    for dtype in sy.dtypes:
        hf_tps = tps[hf_name(dtype)]
        for config in sy.configs:
            name = lm_name((dtype, config))
            ratio = tps[name] / hf_tps
            parts = []
            if config == "exact" and "torch" in sy.configs:
                parts.append(f"exact/torch {tps[name] / tps[lm_name((dtype, 'torch'))]:.2f}x")
            if notes and notes.get(name):
                parts.append(notes[name])
            rows.append(Row(f"{workload}, {short(dtype)} {config}", metric, tps[name], hf_tps,
                            hf_name(dtype), ratio, f">= {target}x" if target else "",
                            (ratio >= target) if target else None, unit, "; ".join(parts)))
    return rows


def bench_prefill(sy: Systems, text: SyntheticText, sz: Sizes, repeats: int,
                  ) -> tuple[list[Row], dict[str, Any]]:
    prompts = text.distinct(sz.prefill_prompts, sz.prefill_len)
    num_tokens = sum(len(p) for p in prompts)
    fns, setup = matrix_fns(sy, lambda name, e: lambda: lm_run(e, prompts, 1),
                            lambda name, m: lambda: hf_prefill(m, prompts, sy.pad_id))
    timings = time_interleaved(fns, repeats, setup=setup, label="prefill")
    tps = {name: num_tokens / t.best for name, t in timings.items()}
    rows = matrix_rows(sy, "prefill", f"{sz.prefill_prompts} prompts x {sz.prefill_len} tok",
                       "tok/s", tps, TARGETS["prefill"])
    data = {"num_prompts": sz.prefill_prompts, "prompt_len": sz.prefill_len,
            "timings": {name: t.as_dict() for name, t in timings.items()},
            "tokens_per_s": tps, "transformers_mode": "one batched forward, logits_to_keep=1"}
    return rows, data


def bench_decode(sy: Systems, text: SyntheticText, sz: Sizes, repeats: int,
                 ) -> tuple[list[Row], dict[str, Any]]:
    rows, data = [], {}
    for batch in sz.decode_batches:
        prompts = text.distinct(batch, sz.decode_prompt_len)
        outs: dict[str, Any] = {}

        def lm_fn(name: str, engine: Engine, prompts: list[list[int]] = prompts,
                  outs: dict[str, Any] = outs) -> Callable[[], None]:
            def run() -> None:
                outs[name] = lm_run(engine, prompts, sz.decode_new)
            return run

        def hf_fn(name: str, model: Any, prompts: list[list[int]] = prompts,
                  outs: dict[str, Any] = outs) -> Callable[[], None]:
            def run() -> None:
                outs[name] = hf_generate(model, prompts, sz.decode_new, sy.pad_id)
            return run

        fns, setup = matrix_fns(sy, lm_fn, hf_fn)
        timings = time_interleaved(fns, repeats, setup=setup, label=f"decode batch {batch}")
        num_new = batch * sz.decode_new
        tps = {name: num_new / t.best for name, t in timings.items()}
        agree = {lm_name(k): same_outputs(outs[lm_name(k)], outs[hf_name(k[0])])
                 for k in sy.keys}
        target = TARGETS["decode32"] if batch == 32 else None
        rows += matrix_rows(sy, "decode", f"batch {batch}, {sz.decode_new} new tok each",
                            "new tok/s", tps, target,
                            {name: f"same greedy as hf {a:.0%}" for name, a in agree.items()})
        data[f"batch_{batch}"] = {
            "batch": batch, "prompt_len": sz.decode_prompt_len, "new_tokens": sz.decode_new,
            "timings": {name: t.as_dict() for name, t in timings.items()},
            "tokens_per_s": tps, "same_greedy_outputs_as_transformers": agree}
    return rows, data


def main_label(sy: Systems) -> str:
    return f"{short(sy.main[0])} {sy.main[1]}"


def bench_shared(sy: Systems, text: SyntheticText, sz: Sizes, repeats: int,
                 ) -> tuple[list[Row], dict[str, Any]]:
    prompts = shared_prompts(text, sz)
    cached, cached_stats = time_lmnb(sy.lm, prompts, sz.shared_new, repeats, "shared lmnb cache")
    nocache, nocache_stats = time_lmnb(sy.lm_nocache, prompts, sz.shared_new, sz.slow_repeats,
                                       "shared lmnb nocache")
    hf_s, hf_mode, hf_data = time_hf_shared(sy, prompts, sz)
    speedup = nocache.best / cached.best
    metric = (f"{sz.shared_requests} req x ({sz.shared_prefix_len}+{sz.shared_suffix_len}) tok, "
              f"{sz.shared_new} new")
    workload = f"shared prefix, {main_label(sy)}"
    rows = [
        Row(workload, metric, cached.best, nocache.best, "lmnb, no cache", speedup,
            f">= {TARGETS['shared']}x", speedup >= TARGETS["shared"], "s",
            f"speedup; hit rate {cached_stats['hit_rate']:.1%}"),
        Row(workload, metric, cached.best, hf_s, hf_name(sy.main[0]), hf_s / cached.best, "",
            None, "s", f"speedup; hf {hf_mode}"),
    ]
    data = {"configuration": lm_name(sy.main),
            "num_requests": sz.shared_requests, "prefix_len": sz.shared_prefix_len,
            "suffix_len": sz.shared_suffix_len, "new_tokens": sz.shared_new,
            "lmnb_cache": cached.as_dict(), "lmnb_cache_stats": cached_stats,
            "lmnb_nocache": nocache.as_dict(), "lmnb_nocache_stats": nocache_stats,
            "transformers_s": hf_s, "transformers_mode": hf_mode, "transformers": hf_data,
            "speedup_vs_nocache": speedup, "speedup_vs_transformers": hf_s / cached.best,
            "hit_rate": cached_stats["hit_rate"]}
    return rows, data


def bench_noshare(sy: Systems, text: SyntheticText, sz: Sizes, repeats: int,
                  ) -> tuple[list[Row], dict[str, Any]]:
    prompts = text.distinct(sz.noshare_requests, sz.noshare_prompt_len)
    engines = {"cache": sy.lm, "nocache": sy.lm_nocache}
    timings: dict[str, Timing] = {name: Timing() for name in engines}
    stats: dict[str, dict[str, float]] = {}
    for _ in range(repeats):  # in turns, so drifting load falls on both alike
        for name, engine in engines.items():
            engine.flush_cache()
            seconds, _, stats[name] = stats_delta(
                engine, lambda e=engine: lm_run(e, prompts, sz.shared_new), f"noshare {name}")
            timings[name].seconds.append(seconds)
            engine.flush_cache()
    ratio = timings["cache"].best / timings["nocache"].best
    metric = f"{sz.noshare_requests} req x {sz.noshare_prompt_len} tok, {sz.shared_new} new"
    rows = [Row(f"no shared prefix, {main_label(sy)}", metric, timings["cache"].best,
                timings["nocache"].best, "lmnb, no cache", ratio, f"<= {TARGETS['noshare']}x",
                ratio <= TARGETS["noshare"], "s",
                f"cache/no-cache time: {ratio - 1:+.1%}; hit rate "
                f"{stats['cache']['hit_rate']:.1%}")]
    data = {"configuration": lm_name(sy.main),
            "num_requests": sz.noshare_requests, "prompt_len": sz.noshare_prompt_len,
            "new_tokens": sz.shared_new, "lmnb_cache": timings["cache"].as_dict(),
            "lmnb_nocache": timings["nocache"].as_dict(), "lmnb_cache_stats": stats["cache"],
            "ratio_cache_over_nocache": ratio, "overhead": ratio - 1}
    return rows, data


def bench_longdecode(sy: Systems, text: SyntheticText, sz: Sizes, repeats: int,
                     ) -> tuple[list[Row], dict[str, Any]]:
    """Decode over long distinct contexts: the prompts are prefilled (and cached) first in
    every configuration's engine, so a timed run is the decode steps plus one token of prefill
    per request; the configurations are timed in turns."""
    prompts = text.distinct(sz.long_requests, sz.long_prompt_len)
    engines = {lm_name(k): sy.engine(k) for k in sy.keys}
    for name, engine in engines.items():
        engine.flush_cache()
        time_once(lambda e=engine: lm_run(e, prompts, 1), f"longdecode prefill {name}")
    outputs: dict[str, list[list[int]]] = {}

    def run(name: str, engine: Engine) -> Callable[[], None]:
        def fn() -> None:
            outputs[name] = [r.output_ids for r in lm_run(engine, prompts, sz.long_new)]
        return fn

    timings = time_interleaved({n: run(n, e) for n, e in engines.items()}, repeats,
                               label="longdecode")
    for engine in engines.values():
        engine.flush_cache()
    new_tokens = sz.long_requests * sz.long_new
    tps = {name: new_tokens / t.best for name, t in timings.items()}
    metric = f"batch {sz.long_requests} x {sz.long_prompt_len} tok context, {sz.long_new} new"
    rows = []
    same: dict[str, bool] = {}
    for dtype in sy.dtypes:
        exact, torch_paths = lm_name((dtype, "exact")), lm_name((dtype, "torch"))
        if exact in tps and torch_paths in tps:
            same[short(dtype)] = outputs[exact] == outputs[torch_paths]
            rows.append(Row(f"long decode, {short(dtype)}", metric, tps[exact],
                            tps[torch_paths], "lmnb, torch paths", tps[exact] / tps[torch_paths],
                            "", None, "new tok/s",
                            f"exact kernels vs torch paths; same tokens: "
                            f"{same[short(dtype)]}"))
        else:
            for name in (exact, torch_paths):
                if name in tps:
                    rows.append(Row(f"long decode, {short(dtype)} {name.split()[-1]}", metric,
                                    tps[name], None, "", None, "", None, "new tok/s"))
    data = {"num_requests": sz.long_requests, "prompt_len": sz.long_prompt_len,
            "new_tokens": sz.long_new,
            "timings": {name: t.as_dict() for name, t in timings.items()},
            "tokens_per_s": tps, "same_tokens_exact_vs_torch": same}
    return rows, data


def chat_ids(tok: Tokenizer, question: str) -> list[int]:
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": question}],
                                              add_generation_prompt=True))


def check_exactness(engine: Engine, questions: list[list[int]], batch: list[list[int]],
                    step: int, new: int) -> dict[str, Any]:
    """Greedy answers (EOS allowed, as a user would run them): each question with nothing
    cached vs with its first `split` tokens cached, for split = 1, 1 + step, ...; then each of
    `batch` alone (nothing cached) vs all of them submitted at once."""
    def answer(ids: list[int]) -> GenerateResult:
        return engine.generate(ids, max_new_tokens=new).result()

    splits_agree, splits, differ = 0, 0, []
    for q, ids in enumerate(questions):
        engine.flush_cache()
        want = answer(ids).output_ids
        for split in range(1, len(ids), step):
            engine.flush_cache()
            engine.generate(ids[:split], max_new_tokens=1).result()  # caches ids[:split]
            got = answer(ids)
            if got.cached_tokens < split:
                raise RuntimeError(f"no cache hit: {got.cached_tokens} < {split} tokens")
            splits += 1
            splits_agree += got.output_ids == want
            if got.output_ids != want:
                differ.append([q, split])
    alone = []
    for ids in batch:
        engine.flush_cache()
        alone.append(answer(ids).output_ids)
    engine.flush_cache()
    handles = [engine.generate(ids, max_new_tokens=new) for ids in batch]
    together = [h.result().output_ids for h in handles]
    engine.flush_cache()
    batched_agree = sum(a == b for a, b in zip(alone, together))
    return {"splits_agree": splits_agree, "splits": splits, "splits_differ": differ,
            "batched_agree": batched_agree, "batched": len(batch),
            "batched_differ": [i for i, (a, b) in enumerate(zip(alone, together)) if a != b]}


def bench_exactness(sy: Systems, text: SyntheticText, sz: Sizes, repeats: int,
                    ) -> tuple[list[Row], dict[str, Any]]:
    questions = [chat_ids(sy.tok, q) for q in QUESTIONS[: sz.exact_questions]]
    mixed = [p for pair in zip(QUESTIONS, COMPLETIONS) for p in pair][: sz.exact_batch]
    batch = [chat_ids(sy.tok, p) if p in QUESTIONS else sy.tok.encode(p) for p in mixed]
    rows, data = [], {}
    for key in sy.keys:
        name = lm_name(key)
        seconds, res = time_once(lambda k=key: check_exactness(
            sy.engine(k), questions, batch, sz.exact_split_step, sz.exact_new),
            f"exactness {name}")
        res["seconds"] = seconds
        data[name] = res
        ok = res["splits_agree"] == res["splits"] and res["batched_agree"] == res["batched"]
        exact = key[1] == "exact"
        rows.append(Row(f"exactness, {short(key[0])} {key[1]}",
                        "greedy: cache hit vs none | alone vs batched", None, None, "", None,
                        "all agree" if exact else "", ok if exact else None, "",
                        f"{res['splits_agree']}/{res['splits']} agree | "
                        f"{res['batched_agree']}/{res['batched']} agree"))
    data["sizes"] = {"questions": len(questions), "split_step": sz.exact_split_step,
                     "batch": len(batch), "new_tokens": sz.exact_new}
    return rows, data


BENCHES: dict[str, Callable[[Systems, SyntheticText, Sizes, int],
                            tuple[list[Row], dict[str, Any]]]] = {
    "prefill": bench_prefill, "decode": bench_decode, "shared": bench_shared,
    "noshare": bench_noshare, "longdecode": bench_longdecode, "exactness": bench_exactness}


# ---- the configurations side by side, and the engines -----------------------------------------


def grid(sy: Systems, sz: Sizes, results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """A line per measurement, a column per system (each dtype's configurations, then
    transformers in that dtype); lmnb's cells add (lmnb / transformers in the same dtype)."""
    columns = []
    for dtype in sy.dtypes:
        columns += [(lm_name((dtype, c)), dtype) for c in sy.configs]
        columns.append((hf_name(dtype), dtype))
    lines: list[list[str]] = []

    def add(label: str, values: dict[str, Any]) -> None:
        cells = [label]
        for name, dtype in columns:
            value, hf = values.get(name), values.get(hf_name(dtype))
            if value is None:
                cells.append("-")
            elif isinstance(value, str):
                cells.append(value)
            elif name.startswith("lmnb") and hf:
                cells.append(f"{fmt(value)} ({value / hf:.2f}x)")
            else:
                cells.append(fmt(value))
        lines.append(cells)

    if "prefill" in results:
        add(f"prefill {sz.prefill_prompts} x {sz.prefill_len} (tok/s)",
            results["prefill"]["tokens_per_s"])
    for batch in sz.decode_batches:
        if f"batch_{batch}" in results.get("decode", {}):
            add(f"decode batch {batch} (new tok/s)",
                results["decode"][f"batch_{batch}"]["tokens_per_s"])
    if "longdecode" in results:
        add(f"long decode {sz.long_requests} x {sz.long_prompt_len} (new tok/s)",
            results["longdecode"]["tokens_per_s"])
    if "exactness" in results:
        ex = results["exactness"]
        add("greedy, cache hit vs none (agree)",
            {n: f"{r['splits_agree']}/{r['splits']}" for n, r in ex.items() if n != "sizes"
             and isinstance(r, dict) and "splits" in r})
        add("greedy, alone vs batched (agree)",
            {n: f"{r['batched_agree']}/{r['batched']}" for n, r in ex.items() if n != "sizes"
             and isinstance(r, dict) and "batched" in r})
    return ["measurement"] + [name for name, _ in columns], lines


def engines_text(info: dict[str, Any]) -> str:
    lines = [f"CPU: {info['cpu_model']} x{info['cpu_cores']}, native bf16: "
             f"{'yes' if info['native_bf16'] else 'no'}; torch {info['torch_version']}, "
             f"{info['torch_threads']} threads; kernels: {info['kernels']}",
             f"default configuration: {info['default_configuration']} "
             f"({info['default_dtype_reason']}); shared / noshare run "
             f"{info['shared_configuration']}"]
    for name, d in info.get("engines", {}).items():
        lines.append(f"  {name}: dtype {d['dtype']} ({d['dtype_reason']}); deterministic "
                     f"{d['deterministic']}; linear: {d['linear']}; attention: "
                     f"{d['attention']}; kernels: {d['kernels']}")
    if info.get("transformers_attention"):
        lines.append(f"  transformers: attention {info['transformers_attention']}")
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------------


def parse_dtypes(value: str) -> list[str]:
    names = {dtype_name(parse_dtype(v.strip(), "--dtypes")) for v in value.split(",")
             if v.strip()}
    if not names:
        raise SystemExit("--dtypes: name at least one of float32, bfloat16")
    return [d for d in (*DTYPES, "float16") if d in names]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run (~3 min)")
    p.add_argument("--only", help=f"comma-separated subset of: {','.join(WORKLOADS)}")
    p.add_argument("--dtypes", default=",".join(DTYPES),
                   help="lmnb's and transformers' dtypes (default: float32,bfloat16)")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help="lmnb's configurations: exact (deterministic=True, the batch-invariant "
                        "kernels), torch (deterministic=False, the torch paths); default both")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    p.add_argument("--repeats", type=int, help="timed repeats of the fast measurements")
    p.add_argument("--name", help="results file: benchmarks/results/<name>.json (default "
                                  "runtime, or runtime_quick with --quick)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workloads = parse_only(args.only, WORKLOADS)
    try:
        dtypes = parse_dtypes(args.dtypes)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    configs = parse_only(args.configs, CONFIGS)
    sizes = QUICK if args.quick else FULL
    name = args.name or ("runtime_quick" if args.quick else "runtime")
    if args.repeats:
        sizes = replace(sizes, repeats=args.repeats)
    started = time.perf_counter()
    sy = Systems(sizes, dtypes, configs, big_main=bool({"shared", "noshare"} & set(workloads)))
    text = SyntheticText(sy.tokenizer, seed=0)
    native = cpu_has_native_bf16()
    info = machine_info(cpu_model=cpu_name(), native_bf16=native, model=sy.model_name,
                        dtypes=sy.dtypes, configs=sy.configs, kernels=sy.kernels_status,
                        default_configuration=lm_name(sy.default),
                        default_dtype_reason=sy.default_reason,
                        shared_configuration=lm_name(sy.main))
    title = (f"lmnb runtime vs transformers - {sy.model_name}, {info['cpu_model']} "
             f"x{info['cpu_cores']}, native bf16: {'yes' if native else 'no'}"
             f"{' (quick)' if args.quick else ''}")
    rows: list[Row] = []
    results: dict[str, Any] = {}

    def save(complete: bool) -> Path:  # after every workload, so a killed run keeps its part
        info["engines"] = sy.describe()
        info["transformers_attention"] = sy.hf_attention
        return write_json(name, {"title": title, "quick": args.quick, "complete": complete,
                                      "machine": info, "sizes": asdict(sizes),
                                      "matrix_cache_tokens": sizes.matrix_cache,
                                      "workloads": results,
                                      "total_seconds": time.perf_counter() - started}, rows)

    try:
        for workload in workloads:
            t0 = time.perf_counter()
            repeats = sizes.noshare_repeats if workload == "noshare" else sizes.repeats
            new_rows, results[workload] = BENCHES[workload](sy, text, sizes, repeats)
            results[workload]["seconds"] = time.perf_counter() - t0
            rows += new_rows
            save(complete=False)
            log(f"[{workload}: {time.perf_counter() - t0:.0f} s]")
    finally:
        sy.shutdown()
    info["load_average_end"] = list(os.getloadavg())
    path = save(complete=True)
    print(engines_text(info))
    caption = ("best of repeats, systems timed in turns; ratio = lmnb / baseline for tok/s, "
               "baseline / lmnb (speedup) for times, except no shared prefix: lmnb time with / "
               "without the cache; exact = Engine(deterministic=True), the batch-invariant "
               "kernels; torch = deterministic=False, the torch paths")
    print_table(title, rows, caption)
    header, lines = grid(sy, sizes, results)
    grid_title = (f"the configurations side by side - {info['cpu_model']} x{info['cpu_cores']}, "
                  f"native bf16: {'yes' if native else 'no'}{' (quick)' if args.quick else ''}")
    grid_caption = ("tok/s, best of repeats, a line's systems timed in turns; (x) = lmnb / "
                    "transformers in the same dtype; agree = k/n greedy answers identical")
    if len(lines):
        print_grid(grid_title, header, lines, grid_caption)
    if args.markdown:
        print(f"\n**{title}**\n\n{engines_text(info)}\n\n{markdown_table(rows)}\n")
        if lines:
            print(f"**{grid_title}** ({grid_caption})\n\n{markdown_grid(header, lines)}\n")
    log(f"wrote {path} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
