"""The one interface the language talks to: the `Backend` protocol, what a state sends
(`Prompt`), what it gets back (`Handle`, `Result`, `Choice`), and `TokenBackend`, the shared
part of every backend that has a tokenizer and scores text by prompt logprobs.

Knows nothing of states, events or HTTP. A backend is either a *token* backend (`tokenizer` is
set: the state is kept as token ids, so every later call's prefix is exactly what the backend
computed and cached) or a *text* backend (`tokenizer` is None: the state keeps text and chat
turns, and a call sends those; an API such as OpenAI's chat completions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from lmnb.lang.chat import ChatTemplate
from lmnb.lang.choices import ChoicesMethod


@dataclass(frozen=True)
class Prompt:
    """A state at the moment of a call: its ids (empty on a text backend), its text, its closed
    chat turns, the open role with the text appended inside it so far, the program's
    `num_api_spec_tokens` (0: no API speculative execution) and a key unique to the open turn
    of this state (a backend keeps a turn's speculative output under it)."""

    ids: list[int]
    text: str
    messages: list[dict[str, str]] = field(default_factory=list)
    role: str | None = None
    role_text: str = ""
    api_spec_tokens: int = 0
    turn: tuple[int, int] = (0, 0)


class Chunk(Protocol):
    text: str
    ids: list[int]


class Result(Protocol):
    """A finished call (the runtime's `GenerateResult` has these fields and more)."""

    text: str
    output_ids: list[int]
    text_ids: list[int]  # output ids that decode to a prefix of `text`
    text_tail: str  # the rest of `text` (a stop string that ended inside a token)
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    prompt_logprobs: list[float] | None

    @property
    def meta(self) -> dict[str, Any]: ...


class Handle(Protocol):
    """One call in flight: iterate for streamed chunks, `result()` to wait, `cancel()` to abort
    (the backend frees what the request held)."""

    def __iter__(self) -> Iterator[Chunk]: ...
    def result(self, timeout: float | None = None) -> Result: ...
    def done(self) -> bool: ...
    def cancel(self) -> None: ...


@dataclass(frozen=True)
class Choice:
    """What `select` decided: the index of the chosen text, its ids (token backends) and meta
    info (scores, logprobs), and the token counts of the calls it made."""

    index: int
    ids: list[int]
    meta: dict[str, Any]
    counts: dict[str, int]


Track = Callable[[Any], Any] | None


@runtime_checkable
class Backend(Protocol):
    """The contract every backend keeps.

    - `tokenizer`: `encode(text) -> ids` / `decode(ids) -> text` without special tokens, or
      None for a text backend.
    - `chat_template`: how role turns are written into the state's text.
    - `generate(prompt, params)`: starts one call with the run's `SamplingParams` and returns
      at once; bad input raises here (TypeError/ValueError naming the problem).
    - `select(prompt, choices, method, track)`: picks one of `choices` to follow the prompt.
    - `commit(prompt, track)`: makes the prompt a cached prefix before forks use it (a no-op
      where the backend has no cache it controls); returns the token counts it cost.
    - `track`, where given, is called with every handle `select`/`commit` start (so that
      cancelling a run aborts them too) and returns it.
    - `flush_cache()`, `get_server_info()`.
    """

    @property
    def tokenizer(self) -> Any: ...
    @property
    def chat_template(self) -> ChatTemplate: ...
    def generate(self, prompt: Prompt, params: Any) -> Handle: ...
    def select(self, prompt: Prompt, choices: Sequence[str], method: ChoicesMethod,
               track: Track = None) -> Choice: ...
    def commit(self, prompt: Prompt, track: Track = None) -> dict[str, int]: ...
    def flush_cache(self) -> bool: ...
    def get_server_info(self) -> dict[str, Any]: ...


def token_counts(results: Sequence[Any]) -> dict[str, int]:
    return {
        "prompt_tokens": sum(r.prompt_tokens for r in results),
        "cached_tokens": sum(r.cached_tokens for r in results),
        "completion_tokens": sum(r.completion_tokens for r in results),
    }


def prompt_ids(prompt: Prompt | Sequence[int]) -> list[int]:
    """A token backend's prompt: the state's ids (plain id lists are taken as they are)."""
    return list(prompt.ids) if isinstance(prompt, Prompt) else list(prompt)


def decide(method: ChoicesMethod, choices: Sequence[str], choice_ids: list[list[int]],
           logprobs: list[list[float]], unconditional: list[list[float]] | None,
           scored: Sequence[Any], counted: Sequence[Any], state_ids: list[list[int]]) -> Choice:
    """The method's pick among scored choices and the meta info `select` records: `scored`
    are the choices' own results (one each), `counted` every result the select cost, and
    `state_ids[i]` what the state appends when choice i wins."""
    decision = method.decide(logprobs, unconditional)
    meta = {
        "choices": list(choices),
        "scores": decision.scores,
        "normalized_prompt_logprobs": [sum(lp) / len(lp) for lp in logprobs],
        "input_token_logprobs": logprobs,
        "input_token_ids": choice_ids,
        "unconditional_token_logprobs": unconditional,
        "prompt_tokens": [r.prompt_tokens for r in scored],
        "cached_tokens": [r.cached_tokens for r in scored],
        **decision.meta,
    }
    i = decision.index
    return Choice(i, state_ids[i], meta, token_counts(counted))


class TokenBackend:
    """`select` and `commit` for backends with a tokenizer and prompt logprobs: each choice is
    scored by one prefill request after the shared prefix (`max_new_tokens=0` with
    `logprob_start_len` at the prefix's end); subclasses give `tokenizer` and `generate`."""

    tokenizer: Any

    def generate(self, prompt: Prompt | Sequence[int], params: Any) -> Any:
        raise NotImplementedError

    def select(self, prompt: Prompt, choices: Sequence[str], method: ChoicesMethod,
               track: Track = None) -> Choice:
        from lmnb.runtime.params import SamplingParams

        start = self._starter(track)
        prefix = prompt_ids(prompt)
        if not prefix:
            raise ValueError("select needs some text before it to condition on")
        choice_ids = [self.tokenizer.encode(c) for c in choices]
        if not all(choice_ids):
            raise ValueError("select choices must not be empty strings")
        scoring = SamplingParams(max_new_tokens=0, logprob_start_len=len(prefix))
        handles = [start(prefix + ids, scoring) for ids in choice_ids]
        unconditional = (
            self._unconditional_logprobs(start, choice_ids) if method.needs_unconditional else None
        )
        results = [h.result() for h in handles]
        logprobs = [list(r.prompt_logprobs) for r in results]
        return decide(method, choices, choice_ids, logprobs, unconditional, results, results,
                      choice_ids)

    def _starter(self, track: Track) -> Callable[[list[int], Any], Any]:
        if track is None:
            return self.generate
        return lambda ids, params: track(self.generate(ids, params))

    @staticmethod
    def _unconditional_logprobs(
        start: Callable[[list[int], Any], Any], choice_ids: list[list[int]]
    ) -> list[list[float]]:
        """Logprobs of each choice given nothing (its first token scores 0, as in SGLang)."""
        from lmnb.runtime.params import SamplingParams

        params = SamplingParams(max_new_tokens=0, logprob_start_len=1)
        handles = [start(ids, params) if len(ids) > 1 else None for ids in choice_ids]
        return [[0.0, *(h.result().prompt_logprobs if h else [])] for h in handles]

    def commit(self, prompt: Prompt | Sequence[int], track: Track = None) -> dict[str, int]:
        """Put the prompt into the cache (a prefill, no output); its token counts."""
        from lmnb.runtime.params import SamplingParams

        ids = prompt_ids(prompt)
        if not ids:
            return {}
        handle = self._starter(track)(ids, SamplingParams(max_new_tokens=0))
        return token_counts([handle.result()])
