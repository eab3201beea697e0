"""JSON decoding benchmark: jump-forward (the compressed FSM) on vs off, plus outlines.

Workload (issue 3, "Benchmark"): 32 requests, "describe character/city N as JSON", half of
them under a 7-field character schema and half under a 7-field city schema (strings with
enums, bounded free strings, integers with bounds, booleans, a nested object). Greedy, on the
default model; a chat-formatted prompt per request, all submitted at once.

Systems, side by side in one run:
  lmnb jump-forward   the engine with `jump_forward=True` (forced text goes in one extend)
  lmnb plain          the same engine with `jump_forward=False` (every token decoded)
  outlines            outlines' JSON-schema logits processor on transformers' own model,
                      one batched `generate` per schema (only where `import outlines` works)
The two lmnb modes run in alternating order (on, off, then off, on, ...), with the radix cache
flushed before every run, and must give the same greedy tokens. Every output of every system
is checked with `jsonschema`.

Prints a rich table (and Markdown with --markdown) and writes benchmarks/results/json.json.
Times are the best of the repeats (noise on a shared machine only adds time). Targets are
reported as PASS/FAIL; the exit status ignores them.

    python benchmarks/bench_json.py [--quick] [--repeats N] [--no-outlines] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, when run as a script

from common import Row, machine_info, markdown_table, print_table, write_json  # noqa: E402

from lmnb.runtime import Engine, GenerateResult  # noqa: E402
from lmnb.runtime import loader as lmnb_loader  # noqa: E402

TARGET_SPEEDUP = 1.6  # throughput, jump-forward over plain decoding
TARGET_FORWARD_RATIO = 0.7  # forward passes, jump-forward / plain (>= 30% fewer)
MAX_NEW_TOKENS = 256  # far above the longest document either schema allows

CHARACTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "race": {"enum": ["human", "elf", "dwarf", "orc", "halfling"]},
        "class": {"enum": ["warrior", "mage", "rogue", "cleric", "ranger"]},
        "level": {"type": "integer", "minimum": 1, "maximum": 20},
        "is_villain": {"type": "boolean"},
        "alignment": {"enum": ["lawful good", "neutral", "chaotic evil"]},
        "stats": {
            "type": "object",
            "properties": {
                "strength": {"type": "integer", "minimum": 1, "maximum": 20},
                "intelligence": {"type": "integer", "minimum": 1, "maximum": 20},
                "charisma": {"type": "integer", "minimum": 1, "maximum": 20},
            },
            "required": ["strength", "intelligence", "charisma"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "race", "class", "level", "is_villain", "alignment", "stats"],
    "additionalProperties": False,
}

CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "country": {"type": "string", "minLength": 1, "maxLength": 24},
        "continent": {"enum": ["Africa", "Asia", "Europe", "North America", "South America",
                               "Oceania"]},
        "population_millions": {"type": "integer", "minimum": 0, "maximum": 40},
        "is_capital": {"type": "boolean"},
        "climate": {"enum": ["tropical", "dry", "temperate", "continental", "polar"]},
        "location": {
            "type": "object",
            "properties": {
                "latitude": {"type": "integer", "minimum": -90, "maximum": 90},
                "longitude": {"type": "integer", "minimum": -180, "maximum": 180},
            },
            "required": ["latitude", "longitude"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "country", "continent", "population_millions", "is_capital",
                 "climate", "location"],
    "additionalProperties": False,
}

CHARACTERS = ["Aragorn", "Gandalf", "Legolas", "Gimli", "Frodo", "Arwen", "Boromir", "Saruman",
              "Galadriel", "Elrond", "Thorin", "Bilbo", "Eowyn", "Faramir", "Sauron", "Radagast"]
CITIES = ["Paris", "Tokyo", "Nairobi", "Lima", "Sydney", "Toronto", "Cairo", "Berlin",
          "Mumbai", "Santiago", "Oslo", "Bangkok", "Lagos", "Madrid", "Seoul", "Denver"]


@dataclass(frozen=True)
class Request:
    prompt: str  # chat-formatted text
    schema: dict[str, Any]
    kind: str  # "character" | "city"


def make_requests(engine: Engine, num_requests: int) -> list[Request]:
    """Characters and cities, interleaved, as chat-formatted prompts."""
    def chat(question: str) -> str:
        return engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True)

    out = []
    for i in range(num_requests):
        if i % 2 == 0:
            name = CHARACTERS[(i // 2) % len(CHARACTERS)]
            out.append(Request(chat(f"Describe the fantasy character {name} as JSON."),
                               CHARACTER_SCHEMA, "character"))
        else:
            name = CITIES[(i // 2) % len(CITIES)]
            out.append(Request(chat(f"Describe the city of {name} as JSON."), CITY_SCHEMA,
                               "city"))
    return out


def is_valid(text: str, schema: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


# ---- lmnb -----------------------------------------------------------------------------------

STAT_KEYS = ("forward_steps", "extend_steps", "decode_steps", "computed_tokens",
             "generated_tokens", "forced_tokens", "jump_forward_steps")


@dataclass
class LmnbRun:
    seconds: float
    results: list[GenerateResult]
    stats: dict[str, int]  # the change in the engine's counters over the run


def run_lmnb(engine: Engine, requests: list[Request], jump_forward: bool,
             concurrency: int) -> LmnbRun:
    """Flush the cache, run every request with at most `concurrency` in flight (timed)."""
    def one(r: Request) -> GenerateResult:
        return engine.generate(r.prompt, json_schema=r.schema, jump_forward=jump_forward,
                               max_new_tokens=MAX_NEW_TOKENS).result()

    engine.flush_cache()
    before = engine.stats()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, requests))
    seconds = time.perf_counter() - started
    after = engine.stats()
    return LmnbRun(seconds, results, {k: after[k] - before[k] for k in STAT_KEYS})


def lmnb_summary(runs: list[LmnbRun], requests: list[Request]) -> dict[str, Any]:
    best = min(runs, key=lambda r: r.seconds)
    res = best.results
    tokens = sum(r.completion_tokens for r in res)
    return {
        "runs_s": [r.seconds for r in runs],
        "best_s": best.seconds,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / best.seconds,
        "requests_per_s": len(res) / best.seconds,
        "forward_passes": best.stats["forward_steps"],
        "forward_passes_per_run": [r.stats["forward_steps"] for r in runs],
        "engine": best.stats,
        "request_decode_steps": sum(r.decode_steps for r in res),
        "request_forced_tokens": sum(r.forced_tokens for r in res),
        "request_jump_forward_steps": sum(r.jump_forward_steps for r in res),
        "finish_reasons": sorted({r.finish_reason for r in res}),
        "valid": sum(is_valid(r.text, q.schema) for r, q in zip(res, requests)),
        "num_requests": len(res),
        "sample_outputs": [r.text for r in res[:2]],
    }


# ---- outlines ---------------------------------------------------------------------------------


def outlines_available() -> str | None:
    """None when outlines imports, else why not."""
    try:
        import outlines  # noqa: F401
    except ImportError as exc:
        return f"outlines is not installed ({exc})"
    return None


def run_outlines(engine: Engine, requests: list[Request], repeats: int) -> dict[str, Any]:
    """outlines (its default JSON backend) on transformers' model, one batch per schema."""
    import outlines
    import torch
    from outlines.types import JsonSchema
    from transformers import AutoModelForCausalLM

    folder = lmnb_loader.resolve(None).folder
    hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=engine.dtype).eval()
    model = outlines.from_transformers(hf_model, engine.tokenizer.hf)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.kind, []).append(i)
    # " ?" between tokens: the closest outlines gets to lmnb's json.dumps separators
    compile_started = time.perf_counter()
    generators = {kind: outlines.Generator(model, JsonSchema(
        json.dumps(requests[idx[0]].schema), whitespace_pattern=r"[ ]?"))
        for kind, idx in groups.items()}
    compile_s = time.perf_counter() - compile_started

    def run_all() -> list[str]:
        texts = [""] * len(requests)
        with torch.inference_mode():
            for kind, idx in groups.items():
                outs = generators[kind].batch([requests[i].prompt for i in idx],
                                              max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
                for i, text in zip(idx, outs):
                    texts[i] = text
        return texts

    generators[requests[0].kind].batch([requests[0].prompt], max_new_tokens=8,
                                       do_sample=False)  # warm-up
    runs, texts = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        texts = run_all()
        runs.append(time.perf_counter() - started)
    best = min(runs)
    tokens = sum(len(engine.tokenizer.encode(t)) for t in texts)
    return {
        "runs_s": runs,
        "best_s": best,
        "compile_s": compile_s,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / best,
        "requests_per_s": len(texts) / best,
        "valid": sum(is_valid(t, r.schema) for t, r in zip(texts, requests)),
        "num_requests": len(texts),
        "backend": "outlines_core (outlines' default for JSON schema)",
        "outlines_version": outlines.__version__ if hasattr(outlines, "__version__") else "?",
        "sample_outputs": texts[:2],
    }


# ---- the report -------------------------------------------------------------------------------


def build_rows(on: dict[str, Any], off: dict[str, Any], same: int, n: int,
               concurrency: int) -> list[Row]:
    wl = f"json x{n}, {concurrency} in flight"
    speed = on["output_tokens_per_s"] / off["output_tokens_per_s"]
    fwd = on["forward_passes"] / off["forward_passes"]
    return [
        Row(wl, "throughput", on["output_tokens_per_s"], off["output_tokens_per_s"],
            "lmnb plain", speed, f">= {TARGET_SPEEDUP}x", speed >= TARGET_SPEEDUP,
            "out tok/s", f"same greedy outputs {same}/{n}"),
        Row(wl, "requests", on["requests_per_s"], off["requests_per_s"], "lmnb plain",
            on["requests_per_s"] / off["requests_per_s"], "", None, "req/s"),
        Row(wl, "forward passes", on["forward_passes"], off["forward_passes"], "lmnb plain",
            fwd, f"<= {TARGET_FORWARD_RATIO}x", fwd <= TARGET_FORWARD_RATIO, "",
            f"extend {on['engine']['extend_steps']} + decode {on['engine']['decode_steps']} "
            f"vs {off['engine']['extend_steps']} + {off['engine']['decode_steps']}"),
        Row(wl, "decode steps per request", on["request_decode_steps"] / n,
            off["request_decode_steps"] / n, "lmnb plain",
            on["request_decode_steps"] / off["request_decode_steps"], "", None, "",
            "sampled tokens (EOS included)"),
        Row(wl, "forced tokens", on["request_forced_tokens"], off["request_forced_tokens"],
            "lmnb plain", None, "", None, "",
            f"in {on['request_jump_forward_steps']} jump-forwards; "
            f"{on['output_tokens']} output tokens"),
        Row(wl, "valid outputs", on["valid"], off["valid"], "lmnb plain", None, f"{n}/{n}",
            on["valid"] == off["valid"] == n, "", "jsonschema"),
    ]


def outlines_rows(on: dict[str, Any], ol: dict[str, Any], n: int) -> list[Row]:
    wl = f"json x{n}, {n} in flight"
    ratio = on["output_tokens_per_s"] / ol["output_tokens_per_s"]
    return [
        Row(wl, "throughput", on["output_tokens_per_s"], ol["output_tokens_per_s"],
            "outlines", ratio, "", None, "out tok/s",
            "transformers generate, one batch per schema, outlines_core backend"),
        Row(wl, "valid outputs", on["valid"], ol["valid"], "outlines", None, "", None, "",
            "jsonschema (outlines_core ignores integer minimum/maximum)"),
    ]


def bench_lmnb(engine: Engine, requests: list[Request], concurrency: int,
               repeats: int) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Both modes in alternating order (on, off, then off, on, ...); their summaries and how
    many requests gave identical greedy tokens."""
    runs: dict[bool, list[LmnbRun]] = {True: [], False: []}
    for i in range(repeats):
        for jf in ((True, False) if i % 2 == 0 else (False, True)):
            runs[jf].append(run_lmnb(engine, requests, jf, concurrency))
            print(f"lmnb, {concurrency} in flight, jump_forward={jf}: "
                  f"{runs[jf][-1].seconds:.1f} s", flush=True)
    same = sum(a.output_ids == b.output_ids
               for a, b in zip(runs[True][-1].results, runs[False][-1].results))
    return lmnb_summary(runs[True], requests), lmnb_summary(runs[False], requests), same


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="8 requests, one repeat: a smoke run")
    p.add_argument("--requests", type=int, help="number of requests (default 32)")
    p.add_argument("--concurrency", help="comma-separated requests in flight (default: all "
                   "at once, then 4 at a time)")
    p.add_argument("--repeats", type=int, help="timed runs of each lmnb mode (default 2)")
    p.add_argument("--no-outlines", action="store_true", help="skip the outlines baseline")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    p.add_argument("--name", default="json", help="results file: benchmarks/results/NAME.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n = args.requests or (8 if args.quick else 32)
    repeats = args.repeats or (1 if args.quick else 2)
    levels = ([int(c) for c in args.concurrency.split(",")] if args.concurrency
              else [n] if args.quick else [n, 4])
    engine = Engine()
    rows: list[Row] = []
    lmnb_data: dict[str, Any] = {}
    try:
        requests = make_requests(engine, n)
        run_lmnb(engine, requests[:2], True, 2)  # warm-up: compiles both schemas
        for c in levels:
            on, off, same = bench_lmnb(engine, requests, c, repeats)
            rows += build_rows(on, off, same, n, c)
            lmnb_data[f"in_flight_{c}"] = {"jump_forward": on, "plain": off,
                                           "same_greedy_outputs": same}
        skip = "skipped (--no-outlines)" if args.no_outlines else outlines_available()
        ol = None if skip else run_outlines(engine, requests, 1)
        if ol is not None:
            print(f"outlines: {ol['best_s']:.1f} s", flush=True)
            all_at_once = lmnb_data.get(f"in_flight_{n}", next(iter(lmnb_data.values())))
            rows += outlines_rows(all_at_once["jump_forward"], ol, n)
        info = machine_info(model=engine.model_name, dtype=str(engine.dtype))
    finally:
        engine.shutdown()
    title = f"JSON decoding: {n} requests, jump-forward vs plain decoding (and outlines)"
    caption = (f"best of {repeats} runs per lmnb mode, alternating order, cache flushed; "
               f"greedy; {info['cpu_model']}, {info['cpu_cores']} cores")
    print_table(title, rows, caption)
    data = {"title": title, "quick": args.quick, "num_requests": n, "repeats": repeats,
            "machine": info, "targets": {"speedup": TARGET_SPEEDUP,
                                         "forward_ratio": TARGET_FORWARD_RATIO},
            "schemas": {"character": CHARACTER_SCHEMA, "city": CITY_SCHEMA},
            "lmnb": lmnb_data, "outlines": ol if ol is not None else {"skipped": skip}}
    path = write_json(args.name, data, rows)
    print(f"wrote {path}")
    if args.markdown:
        print(f"\n**{title}**\n\n{markdown_table(rows)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
