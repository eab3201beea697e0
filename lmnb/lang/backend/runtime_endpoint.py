"""`RuntimeEndpoint`: a program's backend on a remote server that speaks SGLang's native HTTP API
(`lmnb serve`, an SGLang server, an SGLang router).

Owns the calls a state makes, as SGLang's frontend makes them: `/get_model_info` on connect,
`/generate` (streamed for `gen`; one batch of prompts for `select`'s choices; `max_new_tokens=0`
to commit a prefix), `/flush_cache`, `/get_server_info`, `/abort_request` on cancel; and the
views' data (`stats`, `snapshot`, `events`, `idle` over `lmnb serve`'s `/stats`, `/snapshot`,
`/events`). Two modes: with the server's tokenizer on this machine it is a token backend (it
sends `input_ids` and keeps `output_ids`, so every later prefix is exactly the one cached
there); otherwise a text backend (it sends `text`, and `select` finds each choice's tokens in
`return_text_in_logprobs` answers). Loads no torch until a tokenizer is needed. Knows nothing
of states or events.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from lmnb.lang.backend.base import (
    Choice,
    Prompt,
    TokenBackend,
    Track,
    decide,
    prompt_ids,
    token_counts,
)
from lmnb.lang.backend.http_client import HttpClient
from lmnb.lang.backend.remote_handle import StreamHandle, blocking
from lmnb.lang.backend.remote_model import chat_template, find_tokenizer, is_jinja
from lmnb.lang.backend.wire import request_body, to_result, values
from lmnb.lang.chat import ChatTemplate
from lmnb.lang.choices import ChoicesMethod

_UNSET: Any = object()
SCORING = {"max_new_tokens": 0, "temperature": 0.0}


class RuntimeEndpoint(TokenBackend):
    """A remote runtime at `base_url` (SGLang's signature, plus `tokenizer` and `timeout`).

    tokenizer: "auto" (the server's model's tokenizer if that model is on this machine: token
    mode; else text mode), None/False (text mode), a model folder or `.gguf` path, or a
    tokenizer object. timeout: seconds to wait for an answer (None: as long as it takes).
    """

    def __init__(self, base_url: str, api_key: str | None = None, verify: Any = None,
                 chat_template_name: str | None = None, *, tokenizer: Any = "auto",
                 timeout: float | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key, self.verify = api_key, verify  # SGLang's attributes
        self.http = HttpClient(self.base_url, api_key, verify, timeout)
        self.model_info: dict[str, Any] = self.http.get("/get_model_info")
        self._tokenizer_choice = tokenizer
        self._tokenizer: Any = _UNSET
        self.tokenizer_reason = ""  # token or text mode, and why
        self._chat_template_name = chat_template_name
        self.chat_template_source = ""
        self._lock = threading.Lock()

    # ---- what the language reads ----------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The local tokenizer (token mode) or None (text mode), found on first use."""
        with self._lock:
            if self._tokenizer is _UNSET:
                self._tokenizer, self.tokenizer_reason = find_tokenizer(
                    self.model_info, self._tokenizer_choice)
            return self._tokenizer

    @cached_property
    def chat_template(self) -> ChatTemplate:
        template, self.chat_template_source = chat_template(
            self.tokenizer, self._chat_template_name, self._server_template, repr(self))
        return template

    def _server_template(self) -> str | None:
        found = self.model_info.get("chat_template")
        if not is_jinja(found):
            try:
                found = self.get_server_info().get("chat_template")
            except (NotImplementedError, ValueError, PermissionError):
                return None
        return found if is_jinja(found) else None

    def get_model_name(self) -> str:
        return str(self.model_info.get("model_path", ""))

    def get_chat_template(self) -> ChatTemplate:
        return self.chat_template

    # ---- calls ------------------------------------------------------------------------------

    def generate(self, prompt: Prompt | Sequence[int], params: Any) -> StreamHandle:
        body = request_body(self._prompt_of(prompt), params)
        return StreamHandle(self.http, body, self.tokenizer,
                            prompt_logprobs=params.logprob_start_len is not None)

    def _prompt_of(self, prompt: Prompt | Sequence[int]) -> str | list[int]:
        """What a call sends: the ids in token mode (or when given ids), else the text."""
        if self.tokenizer is not None or not isinstance(prompt, Prompt):
            return prompt_ids(prompt)
        return prompt.text

    def commit(self, prompt: Prompt | Sequence[int], track: Track = None) -> dict[str, int]:
        """Prefill the prompt on the server (`max_new_tokens=0`), as SGLang's frontend does
        before a fork; its token counts."""
        sent = self._prompt_of(prompt)
        if not sent:
            return {}
        body = {"input_ids" if isinstance(sent, list) else "text": sent,
                "sampling_params": {"max_new_tokens": 0}}
        return token_counts([to_result(blocking(self.http, body, 1, False, track)[0], None)])

    def cache_prefix(self, prefix: str) -> None:
        """SGLang's `cache_prefix`: put `prefix` into the server's cache."""
        tokenizer = self.tokenizer
        self.commit(tokenizer.encode(prefix) if tokenizer is not None else
                    Prompt([], prefix))

    def select(self, prompt: Prompt, choices: Sequence[str], method: ChoicesMethod,
               track: Track = None) -> Choice:
        """Score every choice after the prompt in one batch of prefill requests."""
        if not all(choices):
            raise ValueError("select choices must not be empty strings")
        if self.tokenizer is not None:
            return self._select_ids(prompt, choices, method, track)
        return self._select_text(prompt, choices, method, track)

    def _select_ids(self, prompt: Prompt, choices: Sequence[str], method: ChoicesMethod,
                    track: Track) -> Choice:
        prefix = prompt_ids(prompt)
        if not prefix:
            raise ValueError("select needs some text before it to condition on")
        choice_ids = [self.tokenizer.encode(c) for c in choices]
        body = {"input_ids": [prefix + ids for ids in choice_ids], "sampling_params": SCORING,
                "return_logprob": True, "logprob_start_len": len(prefix) - 1}
        answers = _scored(blocking(self.http, body, len(choices), True, track))
        logprobs = [values(a["meta_info"]["input_token_logprobs"])[-len(ids):]
                    for a, ids in zip(answers, choice_ids)]
        results = [to_result(a, None) for a in answers]
        return self._decide(choices, choice_ids, logprobs, results, method, track, choice_ids)

    def _select_text(self, prompt: Prompt, choices: Sequence[str], method: ChoicesMethod,
                     track: Track) -> Choice:
        """As SGLang's frontend: prefill the prefix (its length in tokens), then score
        prefix + choice from two tokens before the prefix's end (the last prefix token may
        merge with the choice's first); a choice's tokens are the last ones whose texts
        spell it."""
        text = prompt.text
        if not text:
            raise ValueError("select needs some text before it to condition on")
        head = blocking(self.http, {"text": text, "sampling_params": {"max_new_tokens": 0}},
                        1, False, track)[0]
        prompt_len = int(head["meta_info"]["prompt_tokens"])
        start = max(prompt_len - 2, 0)
        body = {"text": [text + c for c in choices], "sampling_params": SCORING,
                "return_logprob": True, "return_text_in_logprobs": True,
                "logprob_start_len": start}
        answers = _scored(blocking(self.http, body, len(choices), True, track))
        spans = [choice_span(a["meta_info"]["input_token_logprobs"], c, prompt_len - start)
                 for a, c in zip(answers, choices)]
        choice_ids = [[int(t[1]) for t in span] for span in spans]
        results = [to_result(a, None) for a in [head, *answers]]
        return self._decide(choices, choice_ids, [values(s) for s in spans], results, method,
                            track, [[] for _ in choices])

    def _decide(self, choices: Sequence[str], choice_ids: list[list[int]],
                logprobs: list[list[float]], results: list[Any], method: ChoicesMethod,
                track: Track, state_ids: list[list[int]]) -> Choice:
        """The method's pick and the meta info `select` records (as the in-process one)."""
        unconditional = (self._unconditional(choice_ids, track)
                         if method.needs_unconditional else None)
        return decide(method, choices, choice_ids, logprobs, unconditional,
                      results[-len(choices):], results, state_ids)

    def _unconditional(self, choice_ids: list[list[int]], track: Track) -> list[list[float]]:
        """Each choice's logprobs given nothing (its first token scores 0, as in SGLang)."""
        longer = [ids for ids in choice_ids if len(ids) > 1]
        answers = iter(_scored(blocking(
            self.http, {"input_ids": longer, "sampling_params": {"max_new_tokens": 0},
                        "return_logprob": True, "logprob_start_len": 0},
            len(longer), True, track)) if longer else [])
        return [[0.0, *values(next(answers)["meta_info"]["input_token_logprobs"])[1:]]
                if len(ids) > 1 else [0.0] for ids in choice_ids]

    # ---- the server -------------------------------------------------------------------------

    def flush_cache(self) -> bool:
        """Empty the server's cache; False when it refuses (SGLang does while requests run)."""
        try:
            self.http.post("/flush_cache", {})
        except ValueError:
            return False
        return True

    def get_server_info(self) -> dict[str, Any]:
        return self.http.get("/get_server_info")

    def stats(self) -> dict[str, Any]:
        """The engine's counters (`lmnb serve` only: an SGLang server has no /stats)."""
        return self.http.get("/stats")

    def snapshot(self) -> dict[str, Any]:
        """The radix tree as plain data (`lmnb serve` only)."""
        return self.http.get("/snapshot")

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        """Radix tree events after `since` (`lmnb serve` only)."""
        return self.http.get("/events", since=since)

    def idle(self) -> bool:
        st = self.stats()
        return st.get("num_waiting", 0) == 0 and st.get("num_running", 0) == 0

    def close(self) -> None:
        self.http.close()

    def __repr__(self) -> str:
        return f"RuntimeEndpoint({self.base_url!r}, model={self.get_model_name()!r})"


def _scored(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answers of scoring requests; an aborted one (a cancelled run) ends the call."""
    for answer in answers:
        reason = (answer.get("meta_info") or {}).get("finish_reason")
        if isinstance(reason, dict) and reason.get("type") == "abort":
            raise RuntimeError("the request was cancelled")
    return answers


def choice_span(triples: list[list[Any]], choice: str, prefix_entries: int) -> list[list[Any]]:
    """The `[logprob, id, text]` entries that spell `choice` at the end of the prompt: the
    last ones whose texts cover it (a first token may carry the prefix's end too), or, without
    texts, those after the prefix's own `prefix_entries`."""
    if any(t[2] is None for t in triples[1:]):
        return triples[prefix_entries:]
    span: list[list[Any]] = []
    spelt = ""
    for entry in reversed(triples):
        if len(spelt) >= len(choice) or entry[0] is None:
            break
        span.insert(0, entry)
        spelt = entry[2] + spelt
    return span
