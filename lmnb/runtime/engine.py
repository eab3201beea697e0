"""The engine: a model, a KV pool, a radix cache and a scheduler on a background thread.

Owns the public runtime API (generate, stats, snapshot, events, flush_cache, set_policy,
shutdown) and the loop that turns scheduled steps into forwards. Thread-safe to call from any
thread: callers enqueue; the loop thread alone mutates scheduler state, under `_lock`, which
callers also take to read consistent stats and snapshots. Knows nothing of programs, notebooks
or widgets. What happens to a step's logits (sampling, stops, grammar) lives in `outputs.py`.
"""

from __future__ import annotations

import atexit
import itertools
import queue
import threading
import time
import weakref
from types import EllipsisType
from typing import Any

import torch

from lmnb.runtime import loader
from lmnb.runtime.batch import ForwardBatch
from lmnb.runtime.config import ModelConfig
from lmnb.runtime.detokenizer import Detokenizer
from lmnb.runtime.device import (
    Q4_FORMATS,
    cpu_has_native_bf16,
    cpu_name,
    parse_weights,
    pick_attention,
    pick_device,
    pick_dtype,
    pick_kernels,
    pick_weights,
)
from lmnb.runtime.handle import GenerateHandle
from lmnb.runtime.kv_pool import KVPool, ReqToToken
from lmnb.runtime.model import LlamaModel, check_runner
from lmnb.runtime.outputs import OutputProcessor
from lmnb.runtime.params import SamplingParams
from lmnb.runtime.radix_cache import RadixCache
from lmnb.runtime.req import Req
from lmnb.runtime.scheduler import Scheduler, Step
from lmnb.runtime.stats import EngineStats
from lmnb.runtime.submit import check_fits, prompt_ids
from lmnb.runtime.tokenizer import Tokenizer

DEFAULT_MAX_TOKENS_IN_CACHE = 32768

# Engines whose loop may be running: stopped and joined at interpreter exit, before the
# runtime finalises (a daemon thread killed inside a torch op aborts the whole process).
_LIVE_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _stop_engines_at_exit() -> None:
    for eng in list(_LIVE_ENGINES):
        eng._stop(timeout=30)


class Engine:
    def __init__(
        self,
        model: str | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        max_tokens_in_cache: int | None = None,
        policy: str = "lpm",
        disable_radix_cache: bool = False,
        chunk_tokens: int = 1024,
        max_running: int = 64,
        max_context: int | None = None,
        aging_steps: int | None = 256,
        seed: int = 0,
        deterministic: bool | None = None,
        weights: str | None = None,
        runner: str | None = None,
        attention: str | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        """deterministic: run the batch-invariant kernels, so that greedy answers never depend
        on cache hits or on the batch (None: wherever they are available, i.e. on the CPU with
        a C compiler; True: raise where they are not; False: the torch paths).
        weights: the matrix products' weight format, "q4" (a GGUF's Q4_1 blocks as they ship),
        "q4q8" (those blocks times activations quantized to int8 per 32, llama.cpp's
        arithmetic; the native kernels only), "int8" (quantized on load), "bf16" or "fp32"
        (de-quantized); None: `LMNB_WEIGHTS`, else, where the file ships Q4_1 and the native
        kernels run, q4q8 on a CPU with AVX2 (vector integer dot products) and q4 on others,
        else the dtype's.
        runner: "native" (the whole step in one C call, csrc/forward.c; needs the native
        kernels), "torch" (op by op from Python), None (native wherever the kernels run).
        device: "cpu" or "cuda" (None: a CUDA GPU where torch sees one, else the CPU).
        attention: the torch runner's attention without the exact kernels, "torch" or "triton"
        (None: `LMNB_ATTENTION`, else triton on a GPU, torch on the CPU).
        cuda_graphs: decode steps replayed from CUDA graphs per batch bucket (None: on a GPU
        with the Triton attention; True raises where they cannot run)."""
        if weights is not None:
            parse_weights(weights)  # a bad value raises before anything loads
        check_runner(runner)  # likewise
        files = loader.resolve(model)
        self.model_name = files.name
        self.model_path = str(files.folder)  # the local folder the weights and tokenizer load from
        self.tokenizer = Tokenizer(files.folder)
        self.config = ModelConfig.from_hf(loader.load_config(files.folder))
        self.device = pick_device(device)
        native, self._kernels_reason = pick_kernels(self.device, deterministic)
        self.deterministic = native is not None
        self.dtype, self.dtype_reason = pick_dtype(dtype, self.device, native is not None)
        cfg = self.config
        blocks = ({} if files.gguf is None else
                  loader.gguf_blocks(files.gguf, cfg.num_heads, cfg.num_kv_heads))
        self.weights, self.weights_reason = pick_weights(
            weights, {b.kind for b in blocks.values()}, native is not None, self.dtype,
            files.name, int8_dot=native is not None and native.q8_dot)
        self.attention, self.attention_reason = pick_attention(attention, self.device,
                                                               native is not None)
        self.model = LlamaModel(cfg, loader.load_weights(files.folder), self.dtype, self.device,
                                native=native, runner=runner, weights_format=self.weights,
                                blocks=blocks if self.weights in Q4_FORMATS else None,
                                attention="torch" if native else self.attention)
        self.max_context = min(self.config.max_position, max_context or self.config.max_position)
        num_slots = (max_tokens_in_cache or DEFAULT_MAX_TOKENS_IN_CACHE) + 1  # + padding sink
        self.pool = KVPool(cfg.num_layers, num_slots, cfg.num_kv_heads, cfg.head_dim,
                           self.dtype, self.device)
        self.table = ReqToToken(max_running, self.max_context, self.device)
        self.cache = RadixCache(self.pool, disabled=disable_radix_cache)
        self.scheduler = Scheduler(self.pool, self.table, self.cache, policy, chunk_tokens,
                                   max_running, aging_steps)
        self.stats_ = EngineStats()
        self.eos_ids = set(cfg.eos_token_ids) | {self.tokenizer.eos_token_id}
        self.outputs = OutputProcessor(self.tokenizer, self.eos_ids, self.max_context,
                                       self.config.vocab_size, seed, self.device)
        self.graphs, self.graphs_reason = self._decode_graphs(cuda_graphs, max_running)
        self._grammar: Any = None
        self._rids = itertools.count(1)
        self._inbox: queue.Queue = queue.Queue()
        self._lock = threading.RLock()
        self._stopped = threading.Event()
        self._closed: BaseException | None = None  # why the engine takes no more requests
        self._submit_lock = threading.Lock()  # orders submissions against closing
        self._thread = threading.Thread(target=self._loop, name="lmnb-engine", daemon=True)
        self._thread.start()
        _LIVE_ENGINES.add(self)

    # ---- public API -----------------------------------------------------------------------

    def generate(
        self, prompt: str | list[int], params: SamplingParams | None = None, **sampling: Any
    ) -> GenerateHandle:
        """Submit a request; returns at once with a handle that streams and gives the result.

        Bad input raises here (TypeError or ValueError naming the parameter); after shutdown,
        or once the loop has died, this raises RuntimeError instead of accepting.
        """
        self._check_open()
        if params is not None and not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        params = (params or SamplingParams()).merged(**sampling)
        ids = prompt_ids(prompt, self.tokenizer)
        check_fits(ids, params, self.config.vocab_size, self.max_context, self.pool.capacity)
        grammar = self._compile_grammar(params)
        rid = next(self._rids)
        handle = GenerateHandle(rid, self._cancel)
        req = Req(rid, ids, params, handle, Detokenizer(self.tokenizer.decode, params.stop),
                  grammar=grammar)
        with self._submit_lock:  # closing drains the inbox under this lock: nothing is lost
            self._check_open()
            self._inbox.put(("add", req))
        return handle

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self.stats_.as_dict(self.cache, self.pool, self.scheduler)

    def snapshot(self) -> dict[str, Any]:
        """The radix tree and pool use as plain data (node texts decoded), for views."""
        with self._lock:
            snap = self.cache.snapshot()
            snap.update(self.stats_.pool_usage(self.cache, self.pool, self.scheduler))
        for node in snap["nodes"]:
            node["text"] = self.tokenizer.decode(node["token_ids"])
        return snap

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return self.cache.events_since(since)

    def flush_cache(self) -> int:
        """Evict every cached prefix no running request uses; returns the slots freed."""
        with self._lock:
            return self.cache.flush()

    def set_policy(self, policy: str, aging_steps: int | None | EllipsisType = ...) -> None:
        """Change the admission order at run time; and `aging_steps` when given (None turns
        aging off)."""
        if aging_steps is not ... and aging_steps is not None and aging_steps < 0:
            raise ValueError(f"aging_steps must be >= 0 or None, got {aging_steps}")
        with self._lock:
            self.scheduler.set_policy(policy)
            if aging_steps is not ...:
                self.scheduler.aging_steps = aging_steps

    @property
    def policy(self) -> str:
        return self.scheduler.policy

    def idle(self) -> bool:
        with self._lock:
            return self._inbox.empty() and not self.scheduler.has_work()

    def shutdown(self) -> None:
        """Stop the loop. Every request not finished (running, waiting, or still in the inbox)
        ends with a RuntimeError; later generate() calls raise."""
        self._stop(timeout=30)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def describe(self) -> dict[str, Any]:
        """What this engine runs and why: device, dtype, kernels, weight packing, exactness."""
        linears = [lin for layer in self.model.layers
                   for lin in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        paths = {lin.path for lin in linears}
        info = {
            "model": self.model_name,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "dtype_reason": self.dtype_reason,
            "deterministic": self.deterministic,
            "kernels": self._kernels_reason,
            "runner": f"{self.model.runner} ({self.model.runner_reason})",
            "linear": ", ".join(sorted(paths)),
            "weights": self.weights,
            "weights_reason": self.weights_reason,
            "weight_formats": (", ".join(sorted({lin.format for lin in linears}))
                               + f"; lm_head {self.model.lm_head.format}"),
            "weight_mb_per_token": round(
                sum(lin.nbytes for lin in [*linears, self.model.lm_head]) / 1e6, 1),
            "attention": f"{self.attention} ({self.attention_reason})",
            "cuda_graphs": self.graphs_reason if self.graphs is None else
                           self.graphs.describe(),
        }
        if self.device.type == "cpu":
            info["cpu"] = cpu_name()
            info["native_bf16"] = cpu_has_native_bf16()
        else:
            info["gpu"] = torch.cuda.get_device_name(self.device)
        return info

    def _decode_graphs(self, asked: bool | None, max_running: int) -> tuple[Any, str]:
        """(DecodeGraphs or None, why): decode steps from CUDA graphs on a GPU with the torch
        runner and the Triton attention (nothing there synchronises with the host)."""
        if asked is False:
            return None, "off (cuda_graphs=False)"
        why = ("they need a CUDA GPU" if self.device.type != "cuda" else
               "they need the torch runner with Triton attention"
               if self.model.runner != "torch" or self.attention != "triton" else None)
        if why is not None:
            if asked:
                raise ValueError(f"cuda_graphs=True: {why}")
            return None, f"off ({why})"
        from lmnb.runtime.cuda_graphs import DecodeGraphs

        return DecodeGraphs(self.model, max_running), "on"

    def _check_open(self) -> None:
        if self._closed is not None:
            raise RuntimeError(f"the engine takes no more requests: {self._closed}") \
                from self._closed
        if self._stopped.is_set():
            raise RuntimeError("the engine has been shut down")

    def _compile_grammar(self, params: SamplingParams) -> Any:
        if not params.constrained:
            return None
        if self._grammar is None:
            from lmnb.runtime.grammar import GrammarCompiler

            self._grammar = GrammarCompiler(self.tokenizer.hf, self.config.vocab_size)
        compiled = self._grammar.compile(params)  # raises GrammarError (a ValueError)
        return None if compiled is None else compiled.new_state()

    def _cancel(self, rid: int) -> None:
        self._inbox.put(("abort", rid))

    # ---- the loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        error: BaseException = RuntimeError("the engine was shut down")
        try:
            while not self._stopped.is_set():  # checked between steps: shutdown waits one
                self._drain_inbox(block=not self.scheduler.has_work())
                with self._lock:
                    step = self.scheduler.next_step()
                if step is None:
                    if self.scheduler.has_work():
                        time.sleep(0.001)  # only reachable transiently; avoid a hot spin
                    continue
                self._run_step(step)
        except BaseException as exc:  # a bug in the loop: every request gets it, none hangs
            error = RuntimeError(f"the engine loop failed: {exc!r}")
            error.__cause__ = exc
        finally:
            self._close(error)

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        with self._lock:
            while True:
                self._apply(item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    return

    def _apply(self, item: tuple[str, Any]) -> None:
        match item:
            case ("add", req):
                self.stats_.num_requests += 1
                try:
                    self.outputs.start(req)
                except Exception as exc:  # e.g. the grammar's first forced tokens: this one
                    req.handle._finish(None, exc)
                    return
                self.scheduler.add(req)
            case ("abort", rid):
                for req in self.scheduler.waiting + self.scheduler.admitted:
                    if req.rid == rid:
                        req.finish_reason = "abort"
                        self._finish(req)
            case ("wake", _):
                pass

    def _run_step(self, step: Step) -> None:
        try:
            want = [self.outputs.logit_positions(item) for item in step.items]
            batch = ForwardBatch.build(
                step.is_decode,
                [item.req.row for item in step.items],  # type: ignore[misc]
                [item.start for item in step.items],
                [item.ids for item in step.items],
                [item.slots for item in step.items],
                want,
                self.device,
            )
            started = time.perf_counter()
            forward = self.model.forward if self.graphs is None else self.graphs.forward
            logits = forward(batch, self.pool, self.table.table)
        except Exception as exc:  # a failed forward fails its requests, not the engine
            with self._lock:  # and leaves the cache as before: its K/V is never inserted
                for item in step.items:
                    self.scheduler.discard(item)
                    item.req.error = RuntimeError(f"model forward failed: {exc!r}")
                    item.req.error.__cause__ = exc
                    self._finish(item.req)
            return
        with self._lock:
            self.stats_.record_step(step, batch, time.perf_counter() - started)
            done = self.outputs.process(step, want, logits, self.scheduler)
            for req in done:
                self._finish(req)

    def _finish(self, req: Req) -> None:
        self.scheduler.finish(req)
        self.stats_.record_finish(req)
        try:
            self.outputs.deliver(req)
        except Exception as exc:  # building this request's result failed: it alone fails
            if not req.handle.done():
                req.handle._finish(None, exc)

    def _stop(self, timeout: float) -> None:
        """Stop the loop (it checks between steps), wait for it, end every request."""
        self._stopped.set()
        self._inbox.put(("wake", None))
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)
        _LIVE_ENGINES.discard(self)
        error = RuntimeError("the engine was shut down")
        if self._thread.is_alive():  # still inside a step: the loop ends its requests after
            self._close_inbox(error)
        else:  # the loop has done this already; again in case it died before its finally
            self._close(error)

    def _close(self, error: BaseException) -> None:
        """Refuse new requests; every request in the inbox or the scheduler gets `error`."""
        self._close_inbox(error)
        self._fail_all(error)

    def _close_inbox(self, error: BaseException) -> None:
        with self._submit_lock:
            if self._closed is None:
                self._closed = error
        while True:  # nothing is added after _closed is set (generate checks under the lock)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item[0] == "add" and not item[1].handle.done():
                item[1].handle._finish(None, error)

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            for req in self.scheduler.waiting + self.scheduler.admitted:
                req.error = error
                try:
                    self._finish(req)
                except Exception:  # the scheduler's state is broken: drop the request
                    for queue_ in (self.scheduler.waiting, self.scheduler.admitted):
                        if req in queue_:
                            queue_.remove(req)
                if not req.handle.done():
                    req.handle._finish(None, error)
