"""`HFRuntime`: a second backend for the language, on `transformers`' own model, with no reuse.

Owns running one request at a time on `AutoModelForCausalLM`: a prefill of the whole prompt (no
prefix is ever reused across requests), then a token-by-token decode loop with transformers' own
KV cache. Every decision after the forward is the engine's own (`OutputProcessor` on a `Req`:
greedy or sampled, min/max new tokens, EOS and stop ids, stop strings, output logprobs, regex /
JSON schema / choices masks, the result, and a fault failing its request alone); prompt
logprobs from `logprob_start_len` (what `select` scores with) come from the prefill. There is
no jump-forward: forced tokens are decoded one step each under the mask, as a
plain transformers + logits-mask stack does. It is the sequential, no-reuse baseline of
`benchmarks/bench_programs.py`, and a backend users can pick (`HFRuntime()` then
`lm.set_default_backend(...)` or `backend=` on `run`/`run_batch`) to check a program's output
against the reference model.

Requests run synchronously in the caller's thread under one lock, so concurrent program
threads (forks, `run_batch`) queue up: one request at a time, as sequential as it gets.
Knows nothing of programs or states; imports torch and transformers only when constructed.
"""

from __future__ import annotations

import inspect
import itertools
import os
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from lmnb.lang.backend.base import TokenBackend, prompt_ids
from lmnb.lang.chat import ChatTemplate


@dataclass
class HFStats:
    """Cumulative counters, named as in `Engine.stats()` (nothing is ever cached here)."""

    num_requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    computed_tokens: int = 0
    extend_tokens: int = 0
    generated_tokens: int = 0
    extend_steps: int = 0
    decode_steps: int = 0
    busy_seconds: float = 0.0  # time spent running requests

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.__dict__)
        out["hit_rate"] = 0.0
        return out


class HFRuntime(TokenBackend):
    """transformers' `AutoModelForCausalLM` behind the language's backend interface.

    `model` is an HF folder or a `.gguf` path as `Engine` takes it (default: the default model,
    from the same converted folder the engine loads); `dtype` defaults to the engine's choice
    for this machine, so both compute in the same precision. `device`: where the model runs
    (default `LMNB_HF_DEVICE`, else the CPU; `benchmarks/gpu_check.py` sets it to cuda so
    both systems share the GPU).
    """

    def __init__(self, model: str | None = None, dtype: Any = None, seed: int = 0,
                 device: Any = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from lmnb.runtime import loader
        from lmnb.runtime.device import pick_device, pick_dtype
        from lmnb.runtime.outputs import OutputProcessor
        from lmnb.runtime.tokenizer import Tokenizer

        files = loader.resolve(model)
        self.model_name = files.name
        self.folder = files.folder
        self.tokenizer = Tokenizer(files.folder)
        # the dtype an engine with its kernels picks on this machine, for like-for-like runs
        self.dtype = pick_dtype(dtype, pick_device(None), exact_kernels=True)[0]
        self.device = torch.device(device or os.environ.get("LMNB_HF_DEVICE") or "cpu")
        hf = AutoModelForCausalLM.from_pretrained(str(files.folder), dtype=self.dtype)
        self.model = hf.to(self.device).eval()
        self.vocab_size = int(self.model.config.vocab_size)
        self.max_context = int(self.model.config.max_position_embeddings)
        eos = self.model.config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in eos if e is not None} | {self.tokenizer.eos_token_id}
        # the engine's own per-token decisions (masks, EOS/stops, min/max tokens, grammar,
        # results): only the forward differs
        self.outputs = OutputProcessor(self.tokenizer, self.eos_ids, self.max_context,
                                       self.vocab_size, seed, self.device)
        self._rids = itertools.count(1)
        self.stats_ = HFStats()
        self._lock = threading.Lock()
        self._grammar: Any = None
        # transformers 5 renamed `past_key_values` to `cache` (the old name warns)
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward_args else "past_key_values"

    @cached_property
    def chat_template(self) -> ChatTemplate:
        return ChatTemplate.from_tokenizer(self.tokenizer.hf)

    def generate(self, prompt: str | list[int], params: Any = None, **sampling: Any) -> Any:
        """Run the request to the end (under the lock); returns its finished handle (a failed
        request's handle raises its error, as the engine's does)."""
        from lmnb.runtime.params import SamplingParams

        params = (params or SamplingParams()).merged(**sampling)
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt_ids(prompt)
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        if len(ids) >= self.max_context:
            raise ValueError(f"the prompt has {len(ids)} tokens, longer than the context")
        req = self._new_req(ids, params.merged(jump_forward=False))
        with self._lock:
            started = time.perf_counter()
            try:
                self._run(req)
            except Exception as exc:  # a fault of this request's own: it fails alone
                req.error = exc
            self.stats_.busy_seconds += time.perf_counter() - started
            self.stats_.generated_tokens += len(req.output_ids)
            self.outputs.deliver(req)
        return req.handle

    def flush_cache(self) -> bool:
        return True  # nothing is ever kept between requests

    def stats(self) -> dict[str, Any]:
        return self.stats_.as_dict()

    def get_server_info(self) -> dict[str, Any]:
        return self.stats()

    def shutdown(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"HFRuntime({self.model_name!r}, dtype={self.dtype})"

    # ---- one request ----------------------------------------------------------------------

    def _grammar_state(self, params: Any) -> Any:
        if not params.constrained:
            return None
        if self._grammar is None:
            from lmnb.runtime.grammar import GrammarCompiler

            self._grammar = GrammarCompiler(self.tokenizer.hf, self.vocab_size)
        compiled = self._grammar.compile(params)  # a GrammarError (ValueError) names the problem
        return None if compiled is None else compiled.new_state()

    def _new_req(self, ids: list[int], params: Any) -> Any:
        from lmnb.runtime.detokenizer import Detokenizer
        from lmnb.runtime.handle import GenerateHandle
        from lmnb.runtime.req import Req

        rid = next(self._rids)
        return Req(rid, ids, params, GenerateHandle(rid, lambda rid: None),
                   Detokenizer(self.tokenizer.decode, params.stop),
                   grammar=self._grammar_state(params))

    def _run(self, req: Any) -> None:
        """Prefill, then sample and decode one token at a time until the request ends."""
        import torch

        from lmnb.runtime.sampler import sample

        gen = self.outputs.generator_for(req)
        with torch.inference_mode():
            logits, cache, req.prompt_logprobs = self._prefill(req.prompt_ids, req.params)
            if req.params.max_new_tokens == 0:
                req.finish_reason = "length"
                return
            while True:
                banned = self.outputs.banned_row(req)
                banned = (None if banned is None else
                          torch.from_numpy(banned)[None].to(logits.device))
                tokens, lps = sample(logits[None], [req.params], [gen], banned)
                if self.outputs.append_token(req, tokens[0], lps[0]):
                    return
                logits, cache = self._decode(req.output_ids[-1], cache)

    def _prefill(self, ids: list[int], params: Any) -> tuple[Any, Any, list[float]]:
        """The whole prompt in one forward: the next-token logits, the KV cache, and prompt
        logprobs of tokens from `logprob_start_len` on when asked for."""
        import torch

        start = None if params.logprob_start_len is None else max(params.logprob_start_len, 1)
        keep = 1 if start is None else max(len(ids) - start + 1, 1)
        out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True,
                         logits_to_keep=keep)
        self._count(extend=len(ids), prompt=len(ids))
        logits = out.logits[0].float()  # [keep, vocab]
        prompt_logprobs = None
        if start is not None:
            targets = torch.tensor(ids[start:], dtype=torch.long, device=self.device)
            lp = torch.log_softmax(logits[: len(targets)], dim=-1)
            prompt_logprobs = lp.gather(1, targets[:, None])[:, 0].tolist()
        return logits[-1], _kv_cache(out), prompt_logprobs or []

    def _decode(self, token: int, cache: Any) -> tuple[Any, Any]:
        import torch

        out = self.model(input_ids=torch.tensor([[token]], device=self.device), use_cache=True,
                         **{self._cache_kwarg: cache})
        self.stats_.computed_tokens += 1
        self.stats_.decode_steps += 1
        return out.logits[0, -1].float(), _kv_cache(out)

    def _count(self, extend: int, prompt: int) -> None:
        s = self.stats_
        s.num_requests += 1
        s.prompt_tokens += prompt
        s.extend_tokens += extend
        s.computed_tokens += extend
        s.extend_steps += 1


def _kv_cache(out: Any) -> Any:
    """The KV cache a forward returned (`cache` in transformers 5, `past_key_values` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
