"""Testing programs without a model: `ScriptedBackend`, a deterministic stand-in for `Runtime`.

Owns a backend that answers from a script instead of a model, behind the same interface the
interpreter uses (`generate` -> a handle that streams and has `result()`, `tokenizer`,
`chat_template`, `flush_cache`, `stats`):

- a word-level tokenizer (a word with its leading space, a punctuation mark or a whitespace
  character is a token; `<|im_start|>`, `<|im_end|>` and `<|endoftext|>` are special tokens)
  that numbers pieces as it meets them, so ids are stable for the backend's life;
- a ChatML chat template (`<|im_start|>user\\n ... <|im_end|>\\n`), no implicit head;
- generation from a script: a reply for every prompt (a string, a mapping from text the prompt
  contains to a reply, or a function of the prompt text), honouring max/min new tokens, stop
  strings and stop ids, and regex/choices constraints (the longest prefix of the reply that
  matches; a reply that cannot match is an error that names it); JSON schemas are trusted;
- prompt logprobs for `select`: a choice token scores `MATCH_LOGPROB` while the script's
  reply to the text before the choice spells it, `MISS_LOGPROB` from the first token that
  differs on, so `select` picks the choice the reply starts with (ties go to the first);
- a prefix cache that counts cached tokens as the runtime's radix cache does (a request always
  computes its last prompt token; prompts and outputs are inserted), and a log of requests;
- `delay`: seconds per generated token, run on a thread of its own, so that a test can watch a
  program stream or cancel it mid-request (0: every request finishes inside `generate`).

Tests of the language (interpreter, fork/join, errors, events, cancellation) and users' tests
of their own programs run on it in milliseconds. Knows nothing of models or the engine; uses
the runtime's stdlib-only `handle`, `detokenizer`, `params` and `submit` modules (imported
lazily).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from lmnb.lang.backend.base import Prompt, TokenBackend
from lmnb.lang.chat import ChatTemplate

Script = str | Mapping[str, str] | Callable[[str], str] | None

EOS = "<|endoftext|>"
SPECIAL_TOKENS = (EOS, "<|im_start|>", "<|im_end|>")
MATCH_LOGPROB = -0.1  # a token the script's reply spells
MISS_LOGPROB = -5.0  # a token from where the reply differs on
FILLER = " The quick brown fox jumps over the lazy dog."  # the default reply, repeated
_PIECE = re.compile(r" ?\w+| ?[^\w\s]|\s")
_SPECIAL = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS) + ")")

CHATML = ChatTemplate(
    prefixes={r: f"<|im_start|>{r}\n" for r in ("system", "user", "assistant")},
    suffixes={r: "<|im_end|>\n" for r in ("system", "user", "assistant")},
)


class WordTokenizer:
    """Text <-> ids, word by word; a piece gets the next id the first time it is seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pieces: list[str] = list(SPECIAL_TOKENS)
        self._ids: dict[str, int] = {p: i for i, p in enumerate(self._pieces)}
        self.eos_token_id = 0
        self.special_ids = frozenset(range(len(SPECIAL_TOKENS)))

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def pieces(self, text: str) -> list[str]:
        out: list[str] = []
        for part in _SPECIAL.split(text):
            out.extend([part] if part in SPECIAL_TOKENS else _PIECE.findall(part))
        return out

    def encode(self, text: str) -> list[int]:
        with self._lock:
            ids = []
            for piece in self.pieces(text):
                if piece not in self._ids:
                    self._ids[piece] = len(self._pieces)
                    self._pieces.append(piece)
                ids.append(self._ids[piece])
            return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        with self._lock:
            return "".join(
                self._pieces[i] for i in ids if not (skip_special_tokens and i in self.special_ids)
            )


@dataclass
class ScriptedRequest:
    """One request as the backend saw it (`result` is None until it finishes)."""

    prompt: str
    prompt_ids: list[int]
    params: Any  # SamplingParams
    result: Any = None  # GenerateResult


@dataclass
class _Counters:
    num_requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    computed_tokens: int = 0
    generated_tokens: int = 0
    aborted: int = 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.__dict__)
        out["hit_rate"] = self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        return out


class _PrefixCache:
    """Token-id trie: how long a prefix of a sequence has been seen before."""

    def __init__(self) -> None:
        self.root: dict[int, dict] = {}

    def match(self, ids: list[int]) -> int:
        node, n = self.root, 0
        for tok in ids:
            if tok not in node:
                break
            node, n = node[tok], n + 1
        return n

    def insert(self, ids: list[int]) -> None:
        node = self.root
        for tok in ids:
            node = node.setdefault(tok, {})


@dataclass
class _Generation:
    """A request's output as it is produced token by token."""

    detok: Any
    tokens: list[int]  # what the script says, tokenised
    end: str = "length"  # the finish reason when the tokens run out
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    matched_stop: str | int | None = None


class ScriptedBackend(TokenBackend):
    """A backend that replies from `script`; see the module docstring for what it honours.

    `script`: a string (the reply to every prompt), a mapping (the reply of the key that occurs
    latest in the prompt, the longest on a tie; "" when none occurs), a function of the prompt
    text, or None (`FILLER` repeated). A function that raises fails the request in the caller's
    thread, as a refused request does. `max_context` bounds prompt + output tokens;
    `disable_cache` makes every request compute its whole prompt.
    """

    def __init__(
        self,
        script: Script = None,
        *,
        chat_template: ChatTemplate = CHATML,
        delay: float = 0.0,
        max_context: int = 8192,
        disable_cache: bool = False,
    ) -> None:
        self.script = script
        self.tokenizer = WordTokenizer()
        self.chat_template = chat_template
        self.delay = delay
        self.max_context = max_context
        self.disable_cache = disable_cache
        self.requests: list[ScriptedRequest] = []
        self._lock = threading.Lock()
        self._cache = _PrefixCache()
        self._counters = _Counters()
        self._rids = iter(range(1, 1 << 62))

    # ---- the backend interface -------------------------------------------------------------

    def generate(self, prompt: str | list[int], params: Any = None, **sampling: Any) -> Any:
        from lmnb.runtime.handle import GenerateHandle
        from lmnb.runtime.params import SamplingParams
        from lmnb.runtime.submit import prompt_ids

        params = (params or SamplingParams()).merged(**sampling)
        if isinstance(prompt, Prompt):
            prompt = prompt.ids
        ids = prompt_ids(prompt, self.tokenizer)  # the engine's checks of the prompt's form
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        if len(ids) >= self.max_context:
            raise ValueError(
                f"the prompt has {len(ids)} tokens, longer than the context ({self.max_context})"
            )
        request = ScriptedRequest(self.tokenizer.decode(ids), ids, params)
        prompt_logprobs = self._prompt_logprobs(ids, params)
        gen = self._plan(request)  # may raise: the script failed or cannot meet a constraint
        with self._lock:
            rid = next(self._rids)
            self.requests.append(request)
            cached = self._cached_len(ids, params)
            if not self.disable_cache:
                self._cache.insert(ids)
        cancelled = threading.Event()
        handle = GenerateHandle(rid, lambda _rid: cancelled.set())
        run = lambda: self._run(request, gen, handle, cancelled, cached, prompt_logprobs)
        if self.delay and params.max_new_tokens:
            threading.Thread(target=run, daemon=True, name=f"scripted-{rid}").start()
        else:
            run()
        return handle

    def flush_cache(self) -> bool:
        with self._lock:
            self._cache = _PrefixCache()
        return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = self._counters.as_dict()
            out["policy"] = "scripted"
            return out

    def get_server_info(self) -> dict[str, Any]:
        return self.stats()

    def shutdown(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"ScriptedBackend({self.script!r})"

    # ---- what tests read ------------------------------------------------------------------

    @property
    def prompts(self) -> list[str]:
        """The prompt texts of the requests that generated (not the scoring/prefill ones)."""
        with self._lock:
            return [r.prompt for r in self.requests if r.params.max_new_tokens > 0]

    def reply(self, prompt: str) -> str:
        """What the script says after `prompt`."""
        script = self.script
        if script is None:
            return FILLER * 8
        if isinstance(script, str):
            return script
        if isinstance(script, Mapping):
            found = [(prompt.rfind(k) + len(k), len(k), k) for k in script if k in prompt]
            return script[max(found)[2]] if found else ""
        return script(prompt)

    # ---- one request ----------------------------------------------------------------------

    def _cached_len(self, ids: list[int], params: Any) -> int:
        if self.disable_cache:
            return 0
        limit = len(ids) - 1  # the last prompt token is always computed
        if params.logprob_start_len is not None:
            limit = min(limit, max(params.logprob_start_len, 1) - 1)
        return min(self._cache.match(ids), limit)

    def _prompt_logprobs(self, ids: list[int], params: Any) -> list[float] | None:
        if params.logprob_start_len is None:
            return None
        start = max(params.logprob_start_len, 1)
        expected: str | None = self.reply(self.tokenizer.decode(ids[:start]))
        out = []
        for tok in ids[start:]:
            piece = self.tokenizer.decode([tok])
            if expected is not None and piece and expected.startswith(piece):
                out.append(MATCH_LOGPROB)
                expected = expected[len(piece) :]
            else:
                out.append(MISS_LOGPROB)
                expected = None
        return out

    def _plan(self, request: ScriptedRequest) -> _Generation:
        """The tokens the request will produce (before max tokens and stops cut them)."""
        from lmnb.runtime.detokenizer import Detokenizer

        params = request.params
        detok = Detokenizer(self.tokenizer.decode, params.stop)
        if params.max_new_tokens == 0:
            return _Generation(detok, [])
        text, complete = _constrain(self.reply(request.prompt), params)
        tokens = self.tokenizer.encode(text)
        if params.constrained:  # a complete constraint ends the request, else it ran out
            return _Generation(detok, tokens, end="stop" if complete else "length")
        # the "model" goes on where the reply ends: EOS, unless EOS is masked
        want = params.max_new_tokens if params.ignore_eos else params.min_new_tokens
        filler = self.tokenizer.encode(FILLER)
        while len(tokens) < want:
            tokens += filler
        return _Generation(detok, [*tokens, self.tokenizer.eos_token_id])

    def _run(
        self,
        request: ScriptedRequest,
        gen: _Generation,
        handle: Any,
        cancelled: threading.Event,
        cached: int,
        prompt_logprobs: list[float] | None,
    ) -> None:
        from lmnb.runtime.handle import StreamChunk

        params, prompt_len = request.params, len(request.prompt_ids)
        eos = self.tokenizer.eos_token_id
        streamed = 0
        for tok in gen.tokens:
            if len(gen.output_ids) >= params.max_new_tokens or (
                    prompt_len + len(gen.output_ids) >= self.max_context):
                gen.finish_reason = "length"
                break
            if self.delay:
                time.sleep(self.delay)
                if cancelled.is_set():
                    gen.finish_reason = "abort"
                    break
            if (tok == eos and not params.ignore_eos) or tok in params.stop_token_ids:
                gen.finish_reason, gen.matched_stop = "stop", tok
                break
            gen.output_ids.append(tok)
            gen.detok.update(gen.output_ids)
            text = gen.detok.pending(final=False)
            if text:
                handle._push(StreamChunk(text, gen.output_ids[streamed:]))
                streamed = len(gen.output_ids)
            if gen.detok.matched_stop is not None:
                gen.finish_reason, gen.matched_stop = "stop", gen.detok.matched_stop
                break
        else:
            gen.finish_reason = gen.end
        text = gen.detok.pending(final=True)
        if text or gen.output_ids[streamed:]:
            handle._push(StreamChunk(text, gen.output_ids[streamed:]))
        handle._finish(self._result(request, gen, cached, prompt_logprobs))

    def _result(
        self, request: ScriptedRequest, gen: _Generation, cached: int, prompt_logprobs: Any
    ) -> Any:
        from lmnb.runtime.handle import GenerateResult

        params, prompt_len, out = request.params, len(request.prompt_ids), gen.output_ids
        text_ids, tail = gen.detok.split_ids(out)
        result = GenerateResult(
            text=gen.detok.text, output_ids=list(out), finish_reason=gen.finish_reason or "abort",
            prompt_tokens=prompt_len, cached_tokens=cached, completion_tokens=len(out),
            text_ids=text_ids, text_tail=tail, prompt_logprobs=prompt_logprobs,
            output_logprobs=[MATCH_LOGPROB] * len(out) if params.return_logprobs else None,
            decode_steps=len(out), matched_stop=gen.matched_stop,
        )
        with self._lock:
            request.result = result
            c = self._counters
            c.num_requests += 1
            c.prompt_tokens += prompt_len
            c.cached_tokens += cached
            c.computed_tokens += prompt_len - cached + len(out)
            c.generated_tokens += len(out)
            c.aborted += result.finish_reason == "abort"
            if not self.disable_cache:
                self._cache.insert(request.prompt_ids + out)
        return result


def _constrain(reply: str, params: Any) -> tuple[str, bool]:
    """The part of `reply` a constrained request produces, and whether the constraint is
    complete there (True for an unconstrained request). Raises ValueError when no prefix of
    the reply fits the constraint and the whole reply cannot grow into a match either."""
    if params.regex is not None:
        pattern = params.regex
    elif params.choices is not None:
        pattern = "|".join(re.escape(c) for c in params.choices)
    else:
        return reply, True  # unconstrained, or a JSON schema (the reply is trusted)
    for end in range(len(reply), -1, -1):
        if re.fullmatch(pattern, reply[:end]):
            return reply[:end], True
    if _partial_match(pattern, reply):
        return reply, False
    what = f"regex {params.regex!r}" if params.regex is not None else f"choices {params.choices}"
    raise ValueError(f"ScriptedBackend: no prefix of the scripted reply {reply!r} matches {what}")


def _partial_match(pattern: str, text: str) -> bool:
    """Whether `text` can still grow into a match of `pattern` (with the `regex` package)."""
    try:
        import regex
    except ImportError:  # pragma: no cover - transformers depends on regex
        return False
    return regex.fullmatch(pattern, text, partial=True) is not None


@contextlib.contextmanager
def default_backend(backend: Any) -> Iterator[Any]:
    """Make `backend` the default backend inside the block, then restore the previous one."""
    import lmnb.lang.backend

    before = lmnb.lang.backend.current_default_backend()
    lmnb.lang.backend.set_default_backend(backend)
    try:
        yield backend
    finally:
        lmnb.lang.backend.set_default_backend(before)
