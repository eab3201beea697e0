"""Weight formats: what each costs in accuracy and buys in speed (issue 13).

For each weight format the engine offers (`Engine(weights=...)`: q4, q4q8, int8, bf16, fp32) in
each activation dtype (fp32, bf16), against the reference, the fp32 de-quantized model
(`weights="fp32"`, `dtype="float32"`: the GGUF's values in fp32 arithmetic), on the default
model (SmolLM2-135M-Instruct, whose GGUF ships Q4_1 layers and a Q8_0 embedding):

  perplexity   over a fixed English text written into this script (~400 tokens), from the
               engine's own prompt logprobs (one extend)
  agreement    greedy, 16 chat prompts x 32 new tokens (`ignore_eos`), submitted together:
               the % of output tokens equal to the reference's at the same position, and the
               % of prompts whose 32 tokens are all equal
  decode       new tokens/s at batch 1 and 8 (short distinct prompts, `ignore_eos`, a fixed
               number of new tokens, the radix cache flushed before each run, so each run
               also prefills its prompts), every configuration timed in turns (all engines
               alive at once: ~3.5 GB for all eight), best of the repeats (noise on a shared
               machine only adds time)
  bytes        the weight bytes one decode step reads (every matrix once, lm_head included)
  kernels      each packed format's matrix product alone (a 16384 x 4096 weight, larger than
               the caches: GB/s of weight read and GMAC/s, 1 and 8 rows, best of rounds in
               turns) beside the machine's memory bandwidth (`roofline.memory_bandwidth`:
               copy, triad and read-only sum over 512 MB arrays, every core)

Every engine runs the exact (batch-invariant) kernels where they build; the run says so.
Prints a table (Markdown with --markdown) and writes benchmarks/results/weights.json with the
machine (the CPU's name) and every measurement.

    python benchmarks/bench_weights.py [--quick] [--repeats N] [--new-tokens N]
                                       [--dtypes float32,bfloat16] [--formats q4,int8,...]
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, when run as a script

from common import log, machine_info, markdown_grid, print_grid, time_interleaved, write_json  # noqa: E402, I001
from roofline import memory_bandwidth  # noqa: E402

import torch  # noqa: E402

from lmnb.runtime import Engine, cpu_kernels  # noqa: E402
from lmnb.runtime.linear import quantize_int8  # noqa: E402

FORMATS = ("q4", "q4q8", "int8", "bf16", "fp32")
DTYPES = ("float32", "bfloat16")
REFERENCE = ("fp32", "float32")  # (weights, dtype): the fp32 de-quantized model

TEXT = """\
The old lighthouse stood at the end of a narrow spit of land, where the river met the sea.
For more than a hundred years its keepers had climbed the spiral stairs each evening to light
the lamp, and each morning they had climbed them again to put it out. The work was simple,
but it could not be skipped. Ships coming up the coast in fog or darkness looked for the beam,
counted the seconds between its flashes, and knew from the count exactly where they were.

In the spring of the year the lighthouse was automated, the last keeper, a quiet woman named
Margaret, wrote a short letter to the town. She thanked the fishermen who had brought her
bread and news, the children who had waved from the beach, and the postman who had walked the
long path in every kind of weather. She explained that a machine would now switch the lamp on
and off, and that an engineer would visit twice a year to check the batteries and clean the
glass. Nothing, she wrote, would change for the ships at sea.

The town did not quite believe her. On the first night without a keeper, a small crowd
gathered on the harbour wall to watch. At the usual hour, just as the sun went down behind
the hills, the lamp came on by itself. Someone started to clap, and soon everyone was
clapping, although there was nobody in the tower to hear it. Margaret moved to a cottage near
the school, where she taught the children how to read a chart, how to tie a bowline, and how
to tell the time from the position of the stars. Years later, when people asked her whether
she missed the lighthouse, she always gave the same answer: the light was never really hers,
she had only been looking after it for a while.
"""

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Write one sentence about the sea.",
    "What is 12 times 7?",
    "Give me a synonym for happy.",
    "How many days are there in a leap year?",
    "What do bees make?",
    "Explain what a noun is in one sentence.",
    "Which planet is known as the red planet?",
    "Suggest a name for a small black cat.",
    "What is the boiling point of water in Celsius?",
    "Translate 'good morning' into Spanish.",
    "Why do leaves change colour in autumn?",
    "List two uses of a paperclip.",
    "Who wrote Romeo and Juliet?",
    "Describe a rainy day in five words.",
]


class Config:
    """One engine: a weight format in an activation dtype."""

    def __init__(self, weights: str, dtype: str) -> None:
        self.weights, self.dtype = weights, dtype
        self.name = f"{weights} weights, {dtype}"
        self.engine: Engine | None = None
        self.result: dict[str, Any] = {"weights": weights, "dtype": dtype}

    def start(self, cache_tokens: int) -> Engine:
        log(f"loading {self.name}")
        self.engine = Engine(weights=self.weights, dtype=self.dtype,
                             max_tokens_in_cache=cache_tokens)
        info = self.engine.describe()
        self.result.update(describe={k: info.get(k) for k in (
            "dtype", "weights", "weights_reason", "weight_formats", "weight_mb_per_token",
            "deterministic", "kernels", "runner", "linear", "attention")})
        return self.engine

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
            gc.collect()


def chat_prompts(engine: Engine) -> list[list[int]]:
    tok = engine.tokenizer
    return [tok.encode(tok.hf.apply_chat_template([{"role": "user", "content": q}],
                                                  tokenize=False, add_generation_prompt=True))
            for q in QUESTIONS]


def perplexity(engine: Engine, ids: list[int]) -> float:
    engine.flush_cache()
    res = engine.generate(ids, max_new_tokens=1, logprob_start_len=0).result()
    lps = res.prompt_logprobs or []
    assert len(lps) == len(ids) - 1, (len(lps), len(ids))
    return math.exp(-sum(lps) / len(lps))


def greedy(engine: Engine, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    engine.flush_cache()
    handles = [engine.generate(p, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               ignore_eos=True) for p in prompts]
    return [h.result().output_ids for h in handles]


def agreement(outs: list[list[int]], ref: list[list[int]]) -> dict[str, float]:
    same = sum(a == b for o, r in zip(outs, ref) for a, b in zip(o, r))
    total = sum(len(r) for r in ref)
    return {"tokens_pct": 100 * same / total,
            "prompts_all_equal_pct": 100 * sum(o == r for o, r in zip(outs, ref)) / len(ref)}


def decode_fn(engine: Engine, prompts: list[list[int]], new_tokens: int):
    def run() -> None:
        results = [h.result() for h in [
            engine.generate(p, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            ignore_eos=True) for p in prompts]]
        assert all(r.completion_tokens == new_tokens for r in results)
    return run


def measure_group(configs: list[Config], ref: dict[str, Any], args: argparse.Namespace) -> None:
    """Accuracy of each config against ref["outputs"] (the first config's outputs: the
    reference comes first), then decode timed in turns among them."""
    for cfg in configs:
        eng = cfg.start(args.cache_tokens)
        ref.setdefault("text_ids", eng.tokenizer.encode(TEXT))
        outs = greedy(eng, chat_prompts(eng), args.agree_tokens)
        ref.setdefault("outputs", outs)
        cfg.result["perplexity"] = perplexity(eng, ref["text_ids"])
        cfg.result["agreement"] = agreement(outs, ref["outputs"])
        log(f"  {cfg.name}: perplexity {cfg.result['perplexity']:.3f}, agreement "
            f"{cfg.result['agreement']['tokens_pct']:.1f}% of tokens")
    for batch in (1, 8):
        fns = {}
        for cfg in configs:
            eng = cfg.engine
            assert eng is not None
            prompts = [p[-12:] for p in chat_prompts(eng)[:batch]]  # short, distinct
            fns[cfg.name] = decode_fn(eng, prompts, args.new_tokens)
        engines = {cfg.name: cfg.engine for cfg in configs}
        timings = time_interleaved(fns, args.repeats, label=f"decode batch {batch}",
                                   setup=lambda name, e=engines: e[name].flush_cache())
        for cfg in configs:
            t = timings[cfg.name]
            cfg.result[f"decode_b{batch}"] = {
                "new_tokens": args.new_tokens, "tok_s": batch * args.new_tokens / t.best,
                **t.as_dict()}
    for cfg in configs:
        cfg.stop()


def kernel_formats(native: cpu_kernels.NativeKernels, n: int, k: int,
                   ) -> dict[str, cpu_kernels.PackedWeight]:
    """One random weight [n, k] in every packed format (the same values where exact)."""
    gen = torch.Generator().manual_seed(0)
    q4 = cpu_kernels.random_blocks("Q4_1", n, k, gen)
    q8 = cpu_kernels.random_blocks("Q8_0", n, k, gen)
    out = {"q4 (fp32 chain)": native.pack_gguf("Q4_1", q4, n, k),
           "q8 (fp32 chain)": native.pack_gguf("Q8_0", q8, n, k)}
    if native.bf16_pairs:
        out["q4 pairs (bf16 dot)"] = native.pack_gguf("Q4_1", q4, n, k, pairs=True)
        out["q8 pairs (bf16 dot)"] = native.pack_gguf("Q8_0", q8, n, k, pairs=True)
    out["q4 x int8 activations (integer dot)"] = native.pack_gguf("Q4_1", q4, n, k,
                                                                  int8_activations=True)
    values = native.dequantize(out["q4 (fp32 chain)"])
    out["int8 (fp32 chain)"] = native.pack_int8(*quantize_int8(values))
    if native.bf16_pairs:
        out["bf16 pairs (bf16 dot)"] = native.pack(values, None, torch.bfloat16)
    out["bf16 (widened)"] = native.pack(values, None, torch.bfloat16, pairs=False)
    out["fp32"] = native.pack(values, None, torch.float32)
    return out


def measure_kernels(args: argparse.Namespace) -> dict[str, Any]:
    native = cpu_kernels.load()
    if native is None:
        log(f"kernels: skipped ({cpu_kernels.status()})")
        return {"skipped": cpu_kernels.status()}
    log("kernels: memory bandwidth, then each format's product")
    bandwidth = memory_bandwidth(128 if args.quick else 512, 3 if args.quick else 5)
    n, k = 16384, 4096
    weights = kernel_formats(native, n, k)
    out: dict[str, Any] = {"bandwidth": bandwidth, "shape": [n, k],
                           "threads": torch.get_num_threads(), "rows": {}}
    for rows in (1, 8):
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)).bfloat16()
        fns = {name: (lambda w=w, x=x: native.linear(x, w)) for name, w in weights.items()}
        timings = time_interleaved(fns, 5 if args.quick else 60)
        out["rows"][rows] = {name: {
            "ms": 1e3 * t.best, "weight_mb": w.nbytes / 1e6,
            "bits_per_weight": 8 * w.nbytes / (n * k), "gbs": w.nbytes / t.best / 1e9,
            "gmacs": rows * n * k / t.best / 1e9} for (name, t), w in
            zip(timings.items(), weights.values())}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and tokens")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=None, help="decode tokens a request")
    ap.add_argument("--agree-tokens", type=int, default=32)
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--cache-tokens", type=int, default=2048)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--name", default="weights", help="results file name")
    ap.add_argument("--no-kernels", action="store_true", help="skip the kernel measurements")
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.new_tokens = args.new_tokens or (16 if args.quick else 64)
    formats = [f for f in args.formats.split(",") if f]
    dtypes = [d for d in args.dtypes.split(",") if d]
    bad = sorted(set(formats) - set(FORMATS)) + sorted(set(dtypes) - set(DTYPES))
    if bad:
        raise SystemExit(f"unknown format or dtype: {bad}; formats {FORMATS}, dtypes {DTYPES}")

    ref = Config(*REFERENCE)
    # every engine alive at once, so that all are timed in turns (the reference first)
    configs = [ref] + [Config(f, d) for d in dtypes for f in formats if (f, d) != REFERENCE]
    kernels = {} if args.no_kernels else measure_kernels(args)
    shared: dict[str, Any] = {}
    measure_group(configs, shared, args)
    report(configs, ref, shared["text_ids"], kernels, args)


def report_kernels(kernels: dict[str, Any], markdown: bool) -> None:
    if "rows" not in kernels:
        return
    bw = kernels["bandwidth"]
    n, k = kernels["shape"]
    header = ["format", "bits/weight", "1 row (ms)", "1 row (GB/s)", "8 rows (ms)",
              "8 rows (GMAC/s)"]
    one, eight = kernels["rows"][1], kernels["rows"][8]
    lines = [[name, f"{r['bits_per_weight']:.2f}", f"{r['ms']:.3f}", f"{r['gbs']:.1f}",
              f"{eight[name]['ms']:.3f}", f"{eight[name]['gmacs']:.1f}"]
             for name, r in one.items()]
    caption = (f"weight [{n}, {k}], {kernels['threads']} threads; memory: copy "
               f"{bw['copy_gbs']:.1f}, triad {bw['triad_gbs']:.1f}, read {bw['read_gbs']:.1f} "
               f"GB/s")
    print_grid("kernels", header, lines, caption)
    if markdown:
        print(markdown_grid(header, lines))
        print(f"\n{caption}\n")


def report(configs: list[Config], ref: Config, text_ids: list[int], kernels: dict[str, Any],
           args: argparse.Namespace) -> None:
    report_kernels(kernels, args.markdown)
    header = ["config", "weights read/step (MB)", "perplexity", "vs fp32 ref",
              "greedy tokens equal", "prompts equal", "decode b1 (tok/s)", "decode b8 (tok/s)"]
    lines = []
    ref_ppl = ref.result["perplexity"]
    for c in configs:
        r = c.result
        lines.append([c.name, f"{r['describe']['weight_mb_per_token']:.1f}",
                      f"{r['perplexity']:.3f}", f"{r['perplexity'] / ref_ppl - 1:+.2%}",
                      f"{r['agreement']['tokens_pct']:.1f}%",
                      f"{r['agreement']['prompts_all_equal_pct']:.0f}%",
                      f"{r['decode_b1']['tok_s']:.1f}", f"{r['decode_b8']['tok_s']:.1f}"])
    info = machine_info()
    caption = (f"{info['cpu_model']}, {info['cpu_cores']} cores; reference: {ref.name}; "
               f"{len(text_ids)} text tokens; {len(QUESTIONS)} prompts x {args.agree_tokens} "
               f"greedy tokens; decode {args.new_tokens} new tokens a request, best of "
               f"{args.repeats}")
    print_grid("weight formats", header, lines, caption)
    if args.markdown:
        print(markdown_grid(header, lines))
        print(f"\n{caption}")
    path = write_json(args.name, {
        "machine": info, "reference": ref.name, "text_tokens": len(text_ids),
        "prompts": len(QUESTIONS), "agree_tokens": args.agree_tokens,
        "new_tokens": args.new_tokens, "repeats": args.repeats,
        "results": [c.result for c in configs], "kernels": kernels})
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
