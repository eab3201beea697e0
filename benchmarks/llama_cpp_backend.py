"""`LlamaCppBackend`: llama.cpp's server as a backend for the language, so the programs
benchmark runs the same programs, token for token, on llama.cpp.

Owns turning a program's calls into `/completion` requests on a running `LlamaServer`: the
state's token ids go as the prompt (no re-tokenisation, no BOS added), greedy or sampled,
`n_predict`, `ignore_eos`, stop strings, `cache_prompt: true` (llama.cpp's own per-slot
prompt cache), a regex as a GBNF grammar (`regex_to_gbnf`), a JSON schema as the server's
`json_schema`, choices as a grammar of alternatives. `select` scores each choice as lmnb
does, by the logprobs of its tokens after the prompt: a grammar of exactly those token ids
(`<[id]>`) makes the server generate them, and `n_probs` returns each one's logprob under
the raw model (before any sampler). The returned ids go through the engine's own
`OutputProcessor` (stop strings, EOS, lengths, the result fields), as `HFRuntime` does, so a
result means what the engine's means. Requests run on a thread pool (the server's slots are
the batch). `flush_cache()` restarts the server, which also drops its RAM prompt cache.

Not supported (a ValueError names it): stop token ids, `min_tokens` without `ignore_eos`,
prompt logprobs together with generated tokens. Knows nothing of workloads or timing.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any

from llama_server import LlamaServer

from lmnb.lang.backend.base import TokenBackend, prompt_ids
from lmnb.lang.chat import ChatTemplate

# ---- regex -> GBNF --------------------------------------------------------------------------

CLASS_ESCAPES = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " \\t\\n\\r\\x0B\\x0C"}


def _char(c: str) -> str:
    """One character inside a GBNF string or class, escaped where GBNF needs it."""
    if c.isalnum() or c in " !#$%&'()*+,./:;<=>?@_`{|}~":
        return c
    code = ord(c)
    return f"\\x{code:02X}" if code < 256 else f"\\u{code:04X}"


class RegexToGbnf:
    """A recursive-descent translation of the regex subset programs use: literals, escapes,
    classes ([a-z], [^...], \\d \\w \\s), '.', groups ((...), (?:...)), alternation and the
    quantifiers ? * + {m} {m,} {m,n}. Anchors are dropped (the whole output must match)."""

    def __init__(self, pattern: str) -> None:
        self.p, self.i = pattern, 0

    def translate(self) -> str:
        body = self.alternation()
        if self.i != len(self.p):
            raise ValueError(f"regex {self.p!r}: cannot translate at offset {self.i}")
        return f"root ::= {body}"

    def peek(self) -> str:
        return self.p[self.i] if self.i < len(self.p) else ""

    def alternation(self) -> str:
        options = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.sequence())
        return options[0] if len(options) == 1 else "(" + " | ".join(options) + ")"

    def sequence(self) -> str:
        items: list[str] = []
        while self.peek() and self.peek() not in "|)":
            atom = self.atom()
            if not atom:
                continue
            quantifier = self.quantifier()
            if not quantifier and atom[0] == '"' and items and items[-1][-1] == '"' \
                    and items[-1][0] == '"':  # "ab" "c" -> "abc"
                items[-1] = items[-1][:-1] + atom[1:]
            else:
                items.append(atom + quantifier)
        return " ".join(items) if items else '""'

    def quantifier(self) -> str:
        c = self.peek()
        if c in ("?", "*", "+"):
            self.i += 1
            return c
        if c == "{":
            end = self.p.index("}", self.i)
            spec = self.p[self.i + 1:end]
            self.i = end + 1
            return "{" + spec.replace(" ", "") + "}"
        return ""

    def atom(self) -> str:
        c = self.peek()
        self.i += 1
        if c == "(":
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.peek() == "?":
                raise ValueError(f"regex {self.p!r}: lookarounds cannot be translated")
            inner = self.alternation()
            if self.peek() != ")":
                raise ValueError(f"regex {self.p!r}: unbalanced parenthesis")
            self.i += 1
            return f"({inner})"
        if c == "[":
            return self.char_class()
        if c == ".":
            return "[^\\n]"
        if c in "^$":
            return ""
        if c == "\\":
            e = self.p[self.i]
            self.i += 1
            if e.lower() in CLASS_ESCAPES:
                return f"[{'^' if e.isupper() else ''}{CLASS_ESCAPES[e.lower()]}]"
            return '"' + _char({"n": "\n", "t": "\t", "r": "\r"}.get(e, e)) + '"'
        return '"' + _char(c) + '"'

    def char_class(self) -> str:
        out = "["
        if self.peek() == "^":
            out += "^"
            self.i += 1
        first = True
        while self.peek() and (self.peek() != "]" or first):
            c = self.p[self.i]
            self.i += 1
            first = False
            if c == "\\":
                e = self.p[self.i]
                self.i += 1
                out += CLASS_ESCAPES.get(e) or _char({"n": "\n", "t": "\t", "r": "\r"}.get(e, e))
            elif c == "-" and out[-1] not in "[^" and self.peek() not in ("]", ""):
                out += "-"
            else:
                out += _char(c)
        if self.peek() != "]":
            raise ValueError(f"regex {self.p!r}: unterminated character class")
        self.i += 1
        return out + "]"


def regex_to_gbnf(pattern: str) -> str:
    return RegexToGbnf(pattern).translate()


def choices_gbnf(choices: tuple[str, ...]) -> str:
    return "root ::= " + " | ".join('"' + "".join(_char(c) for c in s) + '"' for s in choices)


def tokens_gbnf(ids: list[int]) -> str:
    """A grammar that admits exactly these token ids, in order."""
    return "root ::= " + " ".join(f"<[{i}]>" for i in ids)


# ---- the backend ----------------------------------------------------------------------------


class LlamaCppBackend(TokenBackend):
    """A running `LlamaServer` behind the language's backend interface (see the module).

    `model`: the lmnb model whose tokenizer and chat template the programs use (default:
    the default model, the GGUF the server runs)."""

    def __init__(self, server: LlamaServer, model: str | None = None, seed: int = 0,
                 max_workers: int = 64) -> None:
        from lmnb.runtime import loader
        from lmnb.runtime.config import ModelConfig
        from lmnb.runtime.outputs import OutputProcessor
        from lmnb.runtime.tokenizer import Tokenizer

        files = loader.resolve(model)
        self.server = server
        self.model_name = files.name
        self.tokenizer = Tokenizer(files.folder)
        cfg = ModelConfig.from_hf(loader.load_config(files.folder))
        self.eos_ids = set(cfg.eos_token_ids) | {self.tokenizer.eos_token_id}
        self.max_context = cfg.max_position
        self.outputs = OutputProcessor(self.tokenizer, self.eos_ids, self.max_context,
                                       cfg.vocab_size, seed)
        self.seed = seed
        self._rids = itertools.count(1)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="llama")
        self.stats_ = {"num_requests": 0, "prompt_tokens": 0, "cached_tokens": 0,
                       "computed_tokens": 0, "extend_tokens": 0, "generated_tokens": 0,
                       "extend_steps": 0, "decode_steps": 0, "busy_seconds": 0.0}

    @cached_property
    def chat_template(self) -> ChatTemplate:
        return ChatTemplate.from_tokenizer(self.tokenizer.hf)

    def generate(self, prompt: Any, params: Any = None, **sampling: Any) -> Any:
        from lmnb.runtime.detokenizer import Detokenizer
        from lmnb.runtime.handle import GenerateHandle
        from lmnb.runtime.params import SamplingParams
        from lmnb.runtime.req import Req

        params = (params or SamplingParams()).merged(**sampling)
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt_ids(prompt)
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        payload = self.payload(ids, params)  # raises for what the server cannot do
        rid = next(self._rids)
        req = Req(rid, ids, params.merged(jump_forward=False),
                  GenerateHandle(rid, lambda rid: None), Detokenizer(self.tokenizer.decode,
                                                                     params.stop))
        self._pool.submit(self._run, req, payload)
        return req.handle

    def payload(self, ids: list[int], p: Any) -> dict[str, Any]:
        """The /completion request for a call (ValueError where the server cannot do it)."""
        if p.stop_token_ids:
            raise ValueError("llama.cpp backend: stop token ids are not supported")
        if p.min_new_tokens and not p.ignore_eos:
            raise ValueError("llama.cpp backend: min_tokens is supported with ignore_eos only")
        out: dict[str, Any] = {"cache_prompt": True, "return_tokens": True,
                               "seed": self.seed if p.seed is None else p.seed}
        if p.greedy:
            out["temperature"] = 0.0
        else:
            out.update(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, min_p=0.0,
                       samplers=["top_k", "top_p", "temperature"])
        if p.logprob_start_len is not None:  # score ids[start:] after ids[:start]
            if p.max_new_tokens:
                raise ValueError("llama.cpp backend: prompt logprobs with generated tokens")
            start = max(p.logprob_start_len, 1)
            forced = ids[start:]
            if not forced:
                return {**out, "prompt": ids, "n_predict": 0}
            return {**out, "prompt": ids[:start], "n_predict": len(forced), "n_probs": 1,
                    "grammar": tokens_gbnf(forced), "temperature": 0.0}
        out.update(prompt=ids, n_predict=p.max_new_tokens, ignore_eos=p.ignore_eos)
        if p.stop:
            out["stop"] = list(p.stop)
        if p.regex is not None:
            out["grammar"] = regex_to_gbnf(p.regex)
        elif p.json_schema is not None:
            out["json_schema"] = json.loads(p.json_schema)
        elif p.choices:
            out["grammar"] = choices_gbnf(tuple(p.choices))
        return out

    def _run(self, req: Any, payload: dict[str, Any]) -> None:
        started = time.perf_counter()
        answer: dict[str, Any] = {}
        try:
            answer = self.server.complete(payload)
            self._read(req, payload, answer)
        except Exception as exc:  # this request fails alone, as on the engine
            req.error = exc
        with self._lock:
            self._count(req, answer, time.perf_counter() - started)
            self.outputs.deliver(req)

    def _read(self, req: Any, payload: dict[str, Any], answer: dict[str, Any]) -> None:
        """The answer's ids through the engine's own per-token decisions."""
        tokens = [int(t) for t in answer.get("tokens", [])]
        if req.params.logprob_start_len is not None:
            probs = answer.get("completion_probabilities", [])
            start = len(payload["prompt"])
            if tokens != req.prompt_ids[start:start + len(tokens)] or \
                    len(probs) != len(req.prompt_ids) - start:
                raise RuntimeError(f"llama.cpp did not follow the forced tokens: {tokens}")
            req.prompt_logprobs = [float(p["logprob"]) for p in probs]
            req.finish_reason = "length"
            return
        with self._lock:
            for tok in tokens:
                if self.outputs.append_token(req, tok, 0.0):
                    return
            stop = answer.get("stop_type")
            if stop == "eos" and self.eos_ids:
                self.outputs.append_token(req, min(self.eos_ids), 0.0)
            req.finish_reason = req.finish_reason or ("length" if stop == "limit" else "stop")
            if stop == "word" and req.matched_stop is None:
                req.matched_stop = answer.get("stopping_word")

    def _count(self, req: Any, answer: dict[str, Any], seconds: float) -> None:
        t = answer.get("timings", {})
        s = self.stats_
        s["num_requests"] += 1
        s["prompt_tokens"] += len(req.prompt_ids)
        s["cached_tokens"] += int(t.get("cache_n", 0))
        s["extend_tokens"] += int(t.get("prompt_n", 0))
        s["computed_tokens"] += int(t.get("prompt_n", 0)) + int(t.get("predicted_n", 0))
        s["generated_tokens"] += int(t.get("predicted_n", 0))
        s["busy_seconds"] += seconds

    # ---- the rest of the Backend protocol -------------------------------------------------

    def flush_cache(self) -> bool:
        """Restart the server: its slots' KV and its RAM prompt cache both go."""
        self.server.stop()
        self.server.start()
        return True

    def stats(self) -> dict[str, Any]:
        out = dict(self.stats_)
        out["hit_rate"] = out["cached_tokens"] / max(out["prompt_tokens"], 1)
        return out

    def get_server_info(self) -> dict[str, Any]:
        return {"backend": "llama.cpp", **self.server.describe(), **self.stats()}

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.server.stop()

    def __repr__(self) -> str:
        return f"LlamaCppBackend({self.server.url})"


__all__ = ["LlamaCppBackend", "LlamaServer", "regex_to_gbnf"]
