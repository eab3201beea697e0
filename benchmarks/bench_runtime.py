"""Runtime benchmark: lmnb's engine against transformers' own model, side by side in one run.

Workloads (issue 2, "Benchmark"), all on the default model, same inputs and dtype for both:
  prefill   tokens/s over a few distinct ~512-token prompts (lmnb: max_new_tokens=1, all
            submitted at once; transformers: one batched forward with logits_to_keep=1)
  decode    new tokens/s at batch 1, 8 and 32 (short distinct prompts, a fixed number of new
            tokens; lmnb submits the batch concurrently, transformers runs `generate` on the
            left-padded batch)
  shared    64 requests sharing a 1,000-token prefix + 20 distinct tokens, 32 new tokens each:
            lmnb with the radix cache, lmnb without it, and (for scale) transformers one
            request at a time, timed on a sample
  noshare   the same sizes with no shared prefix at all: the cost of the cache when it cannot hit
  longdecode  decode at batch 8 over distinct ~2,000-token contexts (a multi-turn chat's
            shape): lmnb with its compiled decode attention kernel vs lmnb's torch path
            (`cpu_kernels.disabled()`), in turns on one engine, prompts prefilled beforehand

Prints a rich table (and Markdown with --markdown) and writes benchmarks/results/runtime.json.
Times are the best of the repeats (noise on a shared machine only adds time); systems that are
compared are timed in turns. Targets are reported as PASS/FAIL; the exit status ignores them.

    python benchmarks/bench_runtime.py [--quick] [--only prefill,decode,shared,noshare,longdecode]
                                       [--markdown] [--repeats N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, when run as a script

from common import (  # noqa: E402
    Row,
    SyntheticText,
    Timing,
    log,
    machine_info,
    markdown_table,
    parse_only,
    print_table,
    time_interleaved,
    time_once,
    write_json,
)

from lmnb.runtime import Engine, GenerateResult, cpu_kernels  # noqa: E402
from lmnb.runtime import loader as lmnb_loader  # noqa: E402

WORKLOADS = ("prefill", "decode", "shared", "noshare", "longdecode")
TARGETS = {"prefill": 1.3, "decode32": 3.0, "shared": 5.0, "noshare": 1.03}


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
    repeats: int = 3  # prefill, decode, and lmnb with the cache on the shared prefix
    slow_repeats: int = 1  # the slow baselines of the shared-prefix workload
    noshare_requests: int = 32  # no shared prefix: the cache's own cost, at a size that runs
    noshare_prompt_len: int = 256  # in about a minute per system (64 x 1,020 takes ~8 min)
    noshare_repeats: int = 2  # cache on/off in turns; the overhead is a few percent at most
    max_tokens_in_cache: int = 70_000  # > 64 x (1020 + 32): no request waits for KV
    long_requests: int = 8
    long_prompt_len: int = 2000
    long_new: int = 64


FULL = Sizes()
QUICK = Sizes(prefill_prompts=2, prefill_len=64, decode_prompt_len=8, decode_new=4,
              shared_requests=8, shared_prefix_len=100, shared_suffix_len=8, shared_new=4,
              hf_sequential_sample=1, repeats=1, slow_repeats=1, noshare_requests=8,
              noshare_prompt_len=64, noshare_repeats=1,
              max_tokens_in_cache=4_000, long_requests=2, long_prompt_len=200, long_new=4)


# ---- the systems ----------------------------------------------------------------------------


class Systems:
    """lmnb with the cache, lmnb without it (made on first use) and transformers, loaded once."""

    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self.lm = Engine(max_tokens_in_cache=sizes.max_tokens_in_cache)
        self.dtype: torch.dtype = self.lm.dtype
        self.folder = lmnb_loader.resolve(None).folder
        self._lm_nocache: Engine | None = None
        self._hf: Any = None
        self.tokenizer = self.lm.tokenizer.hf
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        warm_lmnb(self.lm)

    @property
    def lm_nocache(self) -> Engine:
        if self._lm_nocache is None:
            self._lm_nocache = Engine(max_tokens_in_cache=self.sizes.max_tokens_in_cache,
                                      disable_radix_cache=True)
            warm_lmnb(self._lm_nocache)
        return self._lm_nocache

    @property
    def hf(self) -> Any:
        if self._hf is None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(self.folder), dtype=self.dtype)
            self._hf = model.eval()
            warm_hf(self._hf, self.pad_id)
        return self._hf

    @property
    def hf_attention(self) -> str:
        return str(getattr(self.hf.config, "_attn_implementation", "?"))

    def shutdown(self) -> None:
        self.lm.shutdown()
        if self._lm_nocache is not None:
            self._lm_nocache.shutdown()


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


# ---- workloads ------------------------------------------------------------------------------


def bench_prefill(sy: Systems, text: SyntheticText, sz: Sizes, repeats: int,
                  ) -> tuple[list[Row], dict[str, Any]]:
    prompts = text.distinct(sz.prefill_prompts, sz.prefill_len)
    num_tokens = sum(len(p) for p in prompts)
    hf = sy.hf
    timings = time_interleaved(
        {"lmnb": lambda: lm_run(sy.lm, prompts, 1),
         "transformers": lambda: hf_prefill(hf, prompts, sy.pad_id)},
        repeats, setup=lambda name: sy.lm.flush_cache(), label="prefill")
    lm_tps = num_tokens / timings["lmnb"].best
    hf_tps = num_tokens / timings["transformers"].best
    ratio = lm_tps / hf_tps
    row = Row("prefill", f"{sz.prefill_prompts} prompts x {sz.prefill_len} tok", lm_tps, hf_tps,
              "transformers", ratio, f">= {TARGETS['prefill']}x", ratio >= TARGETS["prefill"],
              "tok/s", "hf: one batched forward, logits_to_keep=1")
    data = {"num_prompts": sz.prefill_prompts, "prompt_len": sz.prefill_len,
            "lmnb": timings["lmnb"].as_dict(), "transformers": timings["transformers"].as_dict(),
            "lmnb_tokens_per_s": lm_tps, "transformers_tokens_per_s": hf_tps, "ratio": ratio}
    return [row], data


def bench_decode(sy: Systems, text: SyntheticText, sz: Sizes, repeats: int,
                 ) -> tuple[list[Row], dict[str, Any]]:
    rows, data = [], {}
    hf = sy.hf
    for batch in sz.decode_batches:
        prompts = text.distinct(batch, sz.decode_prompt_len)
        outs: dict[str, Any] = {}

        def run_lm(prompts: list[list[int]] = prompts, outs: dict[str, Any] = outs) -> None:
            outs["lmnb"] = lm_run(sy.lm, prompts, sz.decode_new)

        def run_hf(prompts: list[list[int]] = prompts, outs: dict[str, Any] = outs) -> None:
            outs["hf"] = hf_generate(hf, prompts, sz.decode_new, sy.pad_id)

        timings = time_interleaved({"lmnb": run_lm, "transformers": run_hf}, repeats,
                                   setup=lambda name: sy.lm.flush_cache(),
                                   label=f"decode batch {batch}")
        num_new = batch * sz.decode_new
        lm_tps = num_new / timings["lmnb"].best
        hf_tps = num_new / timings["transformers"].best
        ratio = lm_tps / hf_tps
        agree = same_outputs(outs["lmnb"], outs["hf"])
        target = TARGETS["decode32"] if batch == 32 else None
        rows.append(Row("decode", f"batch {batch}, {sz.decode_new} new tok each", lm_tps,
                        hf_tps, "transformers", ratio, f">= {target}x" if target else "",
                        (ratio >= target) if target else None, "new tok/s",
                        f"same greedy tokens {agree:.0%}"))
        data[f"batch_{batch}"] = {
            "batch": batch, "prompt_len": sz.decode_prompt_len, "new_tokens": sz.decode_new,
            "lmnb": timings["lmnb"].as_dict(), "transformers": timings["transformers"].as_dict(),
            "lmnb_tokens_per_s": lm_tps, "transformers_tokens_per_s": hf_tps, "ratio": ratio,
            "same_greedy_outputs": agree}
    return rows, data


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
    hf = sy.hf
    sample = prompts[: sz.hf_sequential_sample]
    seq_seconds, _ = time_once(lambda: [hf_generate(hf, [p], sz.shared_new, sy.pad_id)
                                        for p in sample],
                               f"shared transformers sequential x{len(sample)}")
    sequential = seq_seconds * len(prompts) / len(sample)
    data = {"sequential_sample": len(sample), "sequential_sample_s": seq_seconds,
            "sequential_scaled_s": sequential}
    return sequential, f"sequential, timed on {len(sample)} of {len(prompts)}", data


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
    rows = [
        Row("shared prefix", metric, cached.best, nocache.best, "lmnb, no cache", speedup,
            f">= {TARGETS['shared']}x", speedup >= TARGETS["shared"], "s",
            f"speedup; hit rate {cached_stats['hit_rate']:.1%}"),
        Row("shared prefix", metric, cached.best, hf_s, "transformers", hf_s / cached.best, "",
            None, "s", f"speedup; hf {hf_mode}"),
    ]
    data = {"num_requests": sz.shared_requests, "prefix_len": sz.shared_prefix_len,
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
    rows = [Row("no shared prefix", metric, timings["cache"].best, timings["nocache"].best,
                "lmnb, no cache", ratio, f"<= {TARGETS['noshare']}x",
                ratio <= TARGETS["noshare"], "s",
                f"cache/no-cache time: {ratio - 1:+.1%}; hit rate "
                f"{stats['cache']['hit_rate']:.1%}")]
    data = {"num_requests": sz.noshare_requests, "prompt_len": sz.noshare_prompt_len,
            "new_tokens": sz.shared_new, "lmnb_cache": timings["cache"].as_dict(),
            "lmnb_nocache": timings["nocache"].as_dict(), "lmnb_cache_stats": stats["cache"],
            "ratio_cache_over_nocache": ratio, "overhead": ratio - 1}
    return rows, data


def bench_longdecode(sy: Systems, text: SyntheticText, sz: Sizes, repeats: int,
                     ) -> tuple[list[Row], dict[str, Any]]:
    """Decode over long distinct contexts: the prompts are prefilled (and cached) first, so a
    timed run is the decode steps plus one token of prefill per request."""
    prompts = text.distinct(sz.long_requests, sz.long_prompt_len)
    engine = sy.lm
    engine.flush_cache()
    lm_run(engine, prompts, 1)
    paths = {"kernel": contextlib.nullcontext, "torch": cpu_kernels.disabled}
    timings: dict[str, Timing] = {name: Timing() for name in paths}
    outputs: dict[str, list[list[int]]] = {}
    for _ in range(repeats):  # in turns
        for name, path in paths.items():
            with path():
                seconds, results = time_once(lambda: lm_run(engine, prompts, sz.long_new),
                                             f"longdecode {name}")
            timings[name].seconds.append(seconds)
            outputs[name] = [r.output_ids for r in results]
    engine.flush_cache()
    new_tokens = sz.long_requests * sz.long_new
    kernel, torch_path = (new_tokens / timings[n].best for n in ("kernel", "torch"))
    metric = (f"batch {sz.long_requests} x {sz.long_prompt_len} tok context, "
              f"{sz.long_new} new (new tok/s)")
    same = outputs["kernel"] == outputs["torch"]
    rows = [Row("long decode", metric, kernel, torch_path, "lmnb, torch attention",
                kernel / torch_path, "", None, "", f"same tokens: {same}; "
                f"{engine.decode_attention}")]
    data = {"num_requests": sz.long_requests, "prompt_len": sz.long_prompt_len,
            "new_tokens": sz.long_new, "kernel": timings["kernel"].as_dict(),
            "torch": timings["torch"].as_dict(), "speedup": kernel / torch_path,
            "same_tokens": same, "decode_attention": engine.decode_attention}
    return rows, data


BENCHES = {"prefill": bench_prefill, "decode": bench_decode, "shared": bench_shared,
           "noshare": bench_noshare, "longdecode": bench_longdecode}


# ---- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run (< 2 min)")
    p.add_argument("--only", help=f"comma-separated subset of: {','.join(WORKLOADS)}")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    p.add_argument("--repeats", type=int, help="timed repeats of the fast measurements")
    p.add_argument("--name", default="runtime",
                   help="results file: benchmarks/results/<name>.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workloads = parse_only(args.only, WORKLOADS)
    sizes = QUICK if args.quick else FULL
    if args.repeats:
        sizes = replace(sizes, repeats=args.repeats)
    started = time.perf_counter()
    sy = Systems(sizes)
    text = SyntheticText(sy.tokenizer, seed=0)
    dtype = str(sy.dtype).removeprefix("torch.")
    info = machine_info(dtype=dtype, model=sy.lm.model_name)
    title = (f"lmnb runtime vs transformers - {sy.lm.model_name}, {dtype}, "
             f"{info['cpu_model']} x{info['cpu_cores']}{' (quick)' if args.quick else ''}")
    rows: list[Row] = []
    results: dict[str, Any] = {}

    def save(complete: bool) -> Path:  # after every workload, so a killed run keeps its part
        info["transformers_attention"] = sy.hf_attention if sy._hf is not None else None
        return write_json(args.name, {"title": title, "quick": args.quick, "complete": complete,
                                      "machine": info, "sizes": asdict(sizes),
                                      "workloads": results,
                                      "total_seconds": time.perf_counter() - started}, rows)

    try:
        for name in workloads:
            t0 = time.perf_counter()
            repeats = sizes.noshare_repeats if name == "noshare" else sizes.repeats
            new_rows, results[name] = BENCHES[name](sy, text, sizes, repeats)
            results[name]["seconds"] = time.perf_counter() - t0
            rows += new_rows
            save(complete=False)
            log(f"[{name}: {time.perf_counter() - t0:.0f} s]")
    finally:
        sy.shutdown()
    info["load_average_end"] = list(os.getloadavg())
    path = save(complete=True)
    caption = ("best of repeats, systems timed in turns; ratio = lmnb / baseline for tok/s, "
               "baseline / lmnb (speedup) for times, except no shared prefix: lmnb time with / "
               "without the cache")
    print_table(title, rows, caption)
    if args.markdown:
        print(f"\n**{title}**\n\n{markdown_table(rows)}\n")
    log(f"wrote {path} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
