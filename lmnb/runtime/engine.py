"""The engine: a model, a KV pool, a radix cache and a scheduler on a background thread.

Owns the public runtime API (generate, stats, snapshot, events, flush_cache, set_policy,
shutdown) and the loop that turns scheduled steps into forwards. Thread-safe to call from any
thread: callers enqueue; the loop thread alone mutates scheduler state, under `_lock`, which
callers also take to read consistent stats and snapshots. Knows nothing of programs, notebooks
or widgets. What happens to a step's logits (sampling, stops, grammar) lives in `outputs.py`.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from types import EllipsisType
from typing import Any

import torch

from lmnb.runtime import cpu_kernels, loader
from lmnb.runtime.batch import ForwardBatch
from lmnb.runtime.config import ModelConfig
from lmnb.runtime.detokenizer import Detokenizer
from lmnb.runtime.device import pick_device, pick_dtype
from lmnb.runtime.handle import GenerateHandle
from lmnb.runtime.kv_pool import KVPool, ReqToToken
from lmnb.runtime.model import LlamaModel
from lmnb.runtime.outputs import OutputProcessor
from lmnb.runtime.params import SamplingParams
from lmnb.runtime.radix_cache import RadixCache
from lmnb.runtime.req import Req
from lmnb.runtime.scheduler import Scheduler, Step
from lmnb.runtime.stats import EngineStats
from lmnb.runtime.tokenizer import Tokenizer

DEFAULT_MAX_TOKENS_IN_CACHE = 32768


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
    ) -> None:
        files = loader.resolve(model)
        self.model_name = files.name
        self.tokenizer = Tokenizer(files.folder)
        self.config = ModelConfig.from_hf(loader.load_config(files.folder))
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model = LlamaModel(self.config, loader.load_weights(files.folder), self.dtype,
                                self.device)
        self.max_context = min(self.config.max_position, max_context or self.config.max_position)
        self.decode_attention = cpu_kernels.prepare(self.device, self.dtype)  # in words
        cfg = self.config
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
                                       self.config.vocab_size, seed)
        self._grammar: Any = None
        self._rids = itertools.count(1)
        self._inbox: queue.Queue = queue.Queue()
        self._lock = threading.RLock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lmnb-engine", daemon=True)
        self._thread.start()

    # ---- public API -----------------------------------------------------------------------

    def generate(
        self, prompt: str | list[int], params: SamplingParams | None = None, **sampling: Any
    ) -> GenerateHandle:
        """Submit a request; returns at once with a handle that streams and gives the result."""
        if self._stopped.is_set():
            raise RuntimeError("the engine has been shut down")
        params = (params or SamplingParams()).merged(**sampling)
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self._check_fits(ids, params)
        grammar = self._compile_grammar(params)
        rid = next(self._rids)
        handle = GenerateHandle(rid, self._cancel)
        req = Req(rid, ids, params, handle, Detokenizer(self.tokenizer.decode, params.stop),
                  grammar=grammar)
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
        self._stopped.set()
        self._inbox.put(("wake", None))
        self._thread.join(timeout=30)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ---- submission checks ----------------------------------------------------------------

    def _check_fits(self, ids: list[int], params: SamplingParams) -> None:
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        if len(ids) >= self.max_context:
            raise ValueError(
                f"the prompt has {len(ids)} tokens, longer than the model's context of "
                f"{self.max_context} tokens (at least one position must remain for output)"
            )
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"token ids out of the vocabulary (size {self.config.vocab_size}): "
                             f"{bad[:5]}")
        need = min(len(ids) + params.max_new_tokens, self.max_context)
        if need > self.pool.capacity:
            raise ValueError(
                f"the request needs up to {need} KV slots (prompt {len(ids)} + max_new_tokens "
                f"{params.max_new_tokens}) but the pool holds {self.pool.capacity}; raise "
                f"max_tokens_in_cache or lower max_new_tokens"
            )

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
        while not self._stopped.is_set():
            self._drain_inbox(block=not self.scheduler.has_work())
            with self._lock:
                step = self.scheduler.next_step()
            if step is None:
                if self.scheduler.has_work():
                    time.sleep(0.001)  # only reachable transiently; avoid a hot spin
                continue
            self._run_step(step)
        self._fail_all(RuntimeError("the engine was shut down"))

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
                self.outputs.start(req)
                self.scheduler.add(req)
            case ("abort", rid):
                for req in self.scheduler.waiting + self.scheduler.admitted:
                    if req.rid == rid:
                        req.finish_reason = "abort"
                        self._finish(req)
            case ("wake", _):
                pass

    def _run_step(self, step: Step) -> None:
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
        try:
            logits = self.model.forward(batch, self.pool, self.table.table)
        except Exception as exc:  # a failed forward fails its requests, not the engine
            with self._lock:
                for item in step.items:
                    self.scheduler.commit(item, share=False)
                    item.req.error = RuntimeError(f"model forward failed: {exc!r}")
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
        self.outputs.deliver(req)

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            for req in self.scheduler.waiting + self.scheduler.admitted:
                req.error = error
                self._finish(req)
