"""`HFRuntime`: a second backend for the language, on `transformers`' own model, with no reuse.

Owns running one request at a time on `AutoModelForCausalLM`: a prefill of the whole prompt (no
prefix is ever reused across requests), then a token-by-token decode loop with transformers' own
KV cache, honouring the same `SamplingParams` as the engine: greedy or sampled, min/max new
tokens, EOS and stop ids, stop strings, prompt logprobs from `logprob_start_len` (what `select`
scores with), output logprobs, and regex / JSON schema / choices through the runtime's grammar
masks. There is no jump-forward: forced tokens are decoded one step each under the mask, as a
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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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


class DoneHandle:
    """A finished request, shaped like the engine's `GenerateHandle` (iterate, `result()`)."""

    def __init__(self, result: Any) -> None:
        self._result = result

    def __iter__(self) -> Iterator[Any]:
        from lmnb.runtime.handle import StreamChunk

        if self._result.text or self._result.output_ids:
            yield StreamChunk(self._result.text, list(self._result.output_ids))

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        return self._result

    def cancel(self) -> None:
        pass


@dataclass
class _Decoding:
    """One request's progress through the decode loop."""

    params: Any
    detok: Any
    grammar: Any
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    generator: Any = None  # None when greedy
    finish_reason: str | None = None
    matched_stop: str | int | None = None
    decode_steps: int = 0


class HFRuntime(TokenBackend):
    """transformers' `AutoModelForCausalLM` behind the language's backend interface.

    `model` is an HF folder or a `.gguf` path as `Engine` takes it (default: the default model,
    from the same converted folder the engine loads); `dtype` defaults to the engine's choice
    for this machine, so both compute in the same precision.
    """

    def __init__(self, model: str | None = None, dtype: Any = None, seed: int = 0) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from lmnb.runtime import loader
        from lmnb.runtime.device import pick_device, pick_dtype
        from lmnb.runtime.tokenizer import Tokenizer

        files = loader.resolve(model)
        self.model_name = files.name
        self.folder = files.folder
        self.tokenizer = Tokenizer(files.folder)
        # the dtype an engine with its kernels picks on this machine, for like-for-like runs
        self.dtype = pick_dtype(dtype, pick_device(None), exact_kernels=True)[0]
        hf = AutoModelForCausalLM.from_pretrained(str(files.folder), dtype=self.dtype)
        self.model = hf.eval()
        self.vocab_size = int(self.model.config.vocab_size)
        self.max_context = int(self.model.config.max_position_embeddings)
        eos = self.model.config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in eos if e is not None} | {self.tokenizer.eos_token_id}
        self.generator = torch.Generator().manual_seed(seed)
        self.stats_ = HFStats()
        self._lock = threading.Lock()
        self._grammar: Any = None
        # transformers 5 renamed `past_key_values` to `cache` (the old name warns)
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward_args else "past_key_values"

    @cached_property
    def chat_template(self) -> ChatTemplate:
        return ChatTemplate.from_tokenizer(self.tokenizer.hf)

    def generate(self, prompt: str | list[int], params: Any = None, **sampling: Any) -> DoneHandle:
        """Run the request to the end (under the lock); returns a finished handle."""
        from lmnb.runtime.params import SamplingParams

        params = (params or SamplingParams()).merged(**sampling)
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt_ids(prompt)
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        if len(ids) >= self.max_context:
            raise ValueError(f"the prompt has {len(ids)} tokens, longer than the context")
        grammar = self._grammar_state(params)
        with self._lock:
            started = time.perf_counter()
            result = self._run(ids, params, grammar)
            self.stats_.busy_seconds += time.perf_counter() - started
        return DoneHandle(result)

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

    def _run(self, ids: list[int], params: Any, grammar: Any) -> Any:
        import torch

        from lmnb.runtime.detokenizer import Detokenizer

        state = _Decoding(params, Detokenizer(self.tokenizer.decode, params.stop), grammar,
                          generator=self._generator(params))
        with torch.inference_mode():
            logits, cache, prompt_logprobs = self._prefill(ids, params)
            if params.max_new_tokens == 0:
                state.finish_reason = "length"
            while state.finish_reason is None:
                self._sample_next(state, logits, len(ids))
                if state.finish_reason is None:
                    logits, cache = self._decode(state.output_ids[-1], cache)
        return self._result(ids, state, prompt_logprobs)

    def _generator(self, params: Any) -> Any:
        """The request's own seeded generator, the backend's shared one, or None (greedy)."""
        import torch

        if params.greedy:
            return None
        return self.generator if params.seed is None else torch.Generator().manual_seed(params.seed)

    def _prefill(self, ids: list[int], params: Any) -> tuple[Any, Any, list[float] | None]:
        """The whole prompt in one forward: the next-token logits, the KV cache, and prompt
        logprobs of tokens from `logprob_start_len` on when asked for."""
        import torch

        start = None if params.logprob_start_len is None else max(params.logprob_start_len, 1)
        keep = 1 if start is None else max(len(ids) - start + 1, 1)
        out = self.model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=keep)
        self._count(extend=len(ids), prompt=len(ids))
        logits = out.logits[0].float()  # [keep, vocab]
        prompt_logprobs = None
        if start is not None:
            targets = torch.tensor(ids[start:], dtype=torch.long)
            lp = torch.log_softmax(logits[: len(targets)], dim=-1)
            prompt_logprobs = lp.gather(1, targets[:, None])[:, 0].tolist()
        return logits[-1], _kv_cache(out), prompt_logprobs

    def _decode(self, token: int, cache: Any) -> tuple[Any, Any]:
        import torch

        out = self.model(input_ids=torch.tensor([[token]]), use_cache=True,
                         **{self._cache_kwarg: cache})
        self.stats_.computed_tokens += 1
        self.stats_.decode_steps += 1
        return out.logits[0, -1].float(), _kv_cache(out)

    def _sample_next(self, state: _Decoding, logits: Any, prompt_len: int) -> None:
        """Sample one token under the masks, append it, and decide whether the request ends."""
        from lmnb.runtime.sampler import sample

        p = state.params
        tokens, lps = sample(logits[None], [p], [state.generator], self._banned(state))
        tok, lp = tokens[0], lps[0]
        state.decode_steps += 1
        if (tok in self.eos_ids and not p.ignore_eos) or tok in p.stop_token_ids:
            state.finish_reason, state.matched_stop = "stop", tok
            return
        state.output_ids.append(tok)
        if p.return_logprobs:
            state.output_logprobs.append(lp)
        if state.grammar is not None:
            state.grammar.accept(tok)
        self._check_end(state, prompt_len)

    def _check_end(self, state: _Decoding, prompt_len: int) -> None:
        state.detok.update(state.output_ids)
        if state.detok.matched_stop is not None:
            state.finish_reason, state.matched_stop = "stop", state.detok.matched_stop
        elif state.grammar is not None and state.grammar.is_finished():
            state.finish_reason = "stop"
        elif (len(state.output_ids) >= state.params.max_new_tokens
              or prompt_len + len(state.output_ids) >= self.max_context):
            state.finish_reason = "length"

    def _banned(self, state: _Decoding) -> Any:
        """[1, vocab] bool, True where a token may not be sampled (None: nothing banned)."""
        import torch

        p = state.params
        mask_eos = len(state.output_ids) < p.min_new_tokens or p.ignore_eos
        if state.grammar is None and not mask_eos:
            return None
        banned = torch.zeros((1, self.vocab_size), dtype=torch.bool)
        if state.grammar is not None:
            from lmnb.runtime.grammar import allocate_bitmask, unpack_bitmask

            bitmask = allocate_bitmask(1, self.vocab_size)
            state.grammar.fill_bitmask(bitmask[0])
            banned[0] = ~unpack_bitmask(bitmask, self.vocab_size)[0]
        if mask_eos:
            stops = [s for s in (*p.stop_token_ids, *self.eos_ids) if s < self.vocab_size]
            banned[0, stops] = True
        return banned

    def _result(self, ids: list[int], state: _Decoding, prompt_logprobs: Any) -> Any:
        from lmnb.runtime.handle import GenerateResult

        self.stats_.generated_tokens += len(state.output_ids)
        if state.detok.matched_stop is None:
            state.detok.update(state.output_ids)
        text_ids, tail = state.detok.split_ids(state.output_ids)
        return GenerateResult(
            text=state.detok.text, output_ids=list(state.output_ids),
            finish_reason=state.finish_reason or "abort", prompt_tokens=len(ids),
            cached_tokens=0, completion_tokens=len(state.output_ids), text_ids=text_ids,
            text_tail=tail, prompt_logprobs=prompt_logprobs,
            output_logprobs=list(state.output_logprobs) if state.params.return_logprobs else None,
            decode_steps=state.decode_steps, matched_stop=state.matched_stop,
        )

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
