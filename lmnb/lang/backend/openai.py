"""`OpenAI`: a text backend on any OpenAI-compatible server (`lmnb serve`, vLLM, SGLang,
OpenAI itself), through the `openai` client.

Owns the requests a program's calls become: chat models send the state's closed turns
(`Prompt.messages`) and the open assistant turn to `/v1/chat/completions`, completion models
send the state's text to `/v1/completions`; the sampling fields, constraints (`regex` and
`choices` as extra body fields, `json_schema` as `response_format`), continuing a partial
assistant message (`continue_final_message`, where the server takes it), API speculative
execution (`api_spec`: one call serves every gen of a turn whose constant text the model
followed) and the token usage. `select` is in `api_select`, the handle and errors in
`api_call`, the request fields in `api_request`. Imports `openai` (and the runtime's result
types) only when a backend is made.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from typing import Any

from lmnb.lang.backend import api_request, api_select
from lmnb.lang.backend.api_call import (
    ApiHandle,
    TokenUsage,
    api_error,
    check_chat_turn,
    result_from,
    served,
    server_message,
)
from lmnb.lang.backend.api_request import (
    cannot_continue,
    refuses_continue,
    sampling_fields,
    sampling_key,
    spec_output,
    speculable,
)
from lmnb.lang.backend.api_spec import MISMATCH, Served, SpecStore, serve
from lmnb.lang.backend.base import Choice, Prompt, Track
from lmnb.lang.chat import ChatTemplate
from lmnb.lang.choices import ChoicesMethod

# Models that only take /v1/completions (SGLang's list); every other name is a chat model.
COMPLETION_MODELS = {"gpt-3.5-turbo-instruct", "davinci-002", "babbage-002"}


class OpenAI:
    """A model behind an OpenAI-compatible API; a *text* backend (`tokenizer` is None).

    `OpenAI("gpt-4o-mini")` or `OpenAI("default", base_url="http://127.0.0.1:30000/v1")`.
    `is_chat_model`: None guesses from the name (chat unless a known completion model).
    `chat_template`: how roles read in the state's text (chat models send messages, so it
    only shows; completion models send that text); `ChatTemplate.plain()` when omitted.
    `continue_final_message`: whether the server continues a partial assistant message (a
    gen after text inside an assistant turn); None tries it once and remembers a refusal.
    `select_methods`: the order `select` tries its methods in (see `api_select`).
    `logit_bias_tokenizer`: the server's tokenizer (`encode`/`decode`), for `select`'s
    logit_bias method. Other keyword arguments go to `openai.OpenAI` (`timeout`, ...).
    """

    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 is_chat_model: bool | None = None, chat_template: ChatTemplate | None = None,
                 *, continue_final_message: bool | None = None,
                 select_methods: Sequence[str] | None = None, logit_bias_tokenizer: Any = None,
                 **client_kwargs: Any) -> None:
        import openai

        if api_key is None:
            api_key = os.environ.get("OPENAI_API_KEY") or ("EMPTY" if base_url else None)
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, **client_kwargs)
        self.model_name = model_name
        self.is_chat_model = (model_name not in COMPLETION_MODELS if is_chat_model is None
                              else is_chat_model)
        self._chat_template = chat_template or ChatTemplate.plain()
        # api.openai.com refuses the field; elsewhere try it once
        self.continue_final_message = (False if continue_final_message is None and not base_url
                                       else continue_final_message)
        self.select_methods = tuple(select_methods or api_select.default_methods(
            self.is_chat_model))
        self.logit_bias_tokenizer = logit_bias_tokenizer
        self.token_usage = TokenUsage()
        self.specs = SpecStore()
        self.where = f"the API at {self.client.base_url}"

    # ---- the Backend protocol -------------------------------------------------------------

    @property
    def tokenizer(self) -> None:
        return None

    @property
    def chat_template(self) -> ChatTemplate:
        return self._chat_template

    def generate(self, prompt: Prompt, params: Any) -> ApiHandle:
        if not self.is_chat_model:
            return self.call(self.completion_request(prompt.text, params))
        check_chat_turn(prompt, "gen")
        if prompt.api_spec_tokens > 0 and speculable(params):
            return self._speculative(prompt, params)
        return self.call(self.chat_request(prompt, params), prompt)

    def select(self, prompt: Prompt, choices: Sequence[str], method: ChoicesMethod,
               track: Track = None) -> Choice:
        return api_select.select(self, prompt, list(choices), method)

    def commit(self, prompt: Prompt, track: Track = None) -> dict[str, int]:
        return {}  # an API's prefix cache is the server's own business

    def flush_cache(self) -> bool:
        return False

    def end_turn(self, turn: tuple[int, int]) -> None:
        """A state's role turn has ended: its speculative output is dropped."""
        self.specs.drop(turn)

    def get_server_info(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model_name,
                "base_url": str(self.client.base_url), "is_chat_model": self.is_chat_model,
                "continue_final_message": self.continue_final_message,
                "token_usage": self.token_usage.as_dict()}

    def __repr__(self) -> str:
        kind = "chat" if self.is_chat_model else "completion"
        return f"OpenAI({self.model_name!r}, {kind}, {self.client.base_url})"

    # ---- requests -------------------------------------------------------------------------

    def completion_request(self, text: str, params: Any) -> dict[str, Any]:
        return {"prompt": text, **sampling_fields(self.model_name, params, chat=False)}

    def chat_request(self, prompt: Prompt, params: Any, continuing: bool | None = None,
                     ) -> dict[str, Any]:
        """The request for a call at the end of `prompt`'s open assistant turn: the turn's
        text so far is a partial assistant message the server continues, where it can."""
        request = sampling_fields(self.model_name, params, chat=True)
        request["messages"] = list(prompt.messages)
        if continuing is None:
            continuing = bool(prompt.role_text)
        if continuing:
            if self.continue_final_message is False:
                raise ValueError(cannot_continue(prompt.role_text, self.where))
            request["messages"].append({"role": "assistant", "content": prompt.role_text})
            request["extra_body"] = {**request.get("extra_body", {}), **api_request.CONTINUE}
        return request

    def create(self, request: dict[str, Any], prompt: Prompt | None = None, **more: Any) -> Any:
        """Send one request (chat when it has messages); a refusal of continuing a partial
        message is remembered and reported as what the program asked for."""
        import openai

        chat = "messages" in request
        endpoint = self.client.chat.completions if chat else self.client.completions
        try:
            return endpoint.create(**request, **more)
        except openai.BadRequestError as exc:
            extra = request.get("extra_body", {})
            if chat and any(k in extra for k in api_request.CONTINUE) and refuses_continue(exc):
                self.continue_final_message = False
                role_text = prompt.role_text if prompt is not None else ""
                detail = server_message(exc)
                raise ValueError(cannot_continue(role_text, self.where, detail)) from None
            raise

    def call(self, request: dict[str, Any], prompt: Prompt | None = None,
             **meta: Any) -> ApiHandle:
        """A streamed call; its chunks are the text as the server sends it."""
        return ApiHandle(lambda handle: self.stream(handle, request, prompt, **meta),
                         self.describe)

    def stream(self, handle: ApiHandle, request: dict[str, Any], prompt: Prompt | None,
               api_calls: int = 1, **meta: Any) -> Generator[str, None, Any]:
        chat = "messages" in request
        stream = self.create(request, prompt, stream=True,
                             stream_options={"include_usage": True})
        handle.attach(stream)
        parts, finish, usage = [], None, None
        for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text = (choice.delta.content if chat else choice.text) or ""
                parts.append(text)
                yield text
                finish = choice.finish_reason or finish
        self.count(usage)
        return result_from("".join(parts), finish, usage, api_calls=api_calls, **meta)

    def count(self, usage: Any, calls: int = 1) -> None:
        result = result_from("", None, usage)
        self.token_usage.add(num_api_calls=calls, prompt_tokens=result.prompt_tokens,
                             completion_tokens=result.completion_tokens,
                             cached_tokens=result.cached_tokens)

    def describe(self, exc: BaseException) -> BaseException:
        return api_error(exc, self.where)

    # ---- API speculative execution --------------------------------------------------------

    def _speculative(self, prompt: Prompt, params: Any) -> ApiHandle:
        """A gen in a turn with `num_api_spec_tokens`: served from the turn's speculative
        output when the model followed the program's text, else a speculative call."""
        sampling = sampling_key(params)
        spec = self.specs.get(prompt.turn)
        reason, wrote = None, None
        if spec is not None:
            got = serve(spec, prompt.role_text, params.stop, params.max_new_tokens, sampling)
            if isinstance(got, Served):
                self.token_usage.add(saved_api_calls=1, saved_prompt_tokens=got.prompt_tokens)
                return served(got.text, self._served_result(got))
            reason, wrote = got, spec.text
        return ApiHandle(lambda h: self._spec_call(h, prompt, params, sampling, reason, wrote),
                         self.describe)

    def _spec_call(self, handle: ApiHandle, prompt: Prompt, params: Any, sampling: tuple,
                   reason: str | None, wrote: str | None) -> Generator[str, None, Any]:
        """Ask for `api_spec_tokens` tokens without the gen's stop strings, keep the output for
        the turn's later gens, cut this gen's value from it. It continues the turn's text
        where the server can; else it opens the turn afresh (the first gen only) and the
        output must then repeat the turn's text."""
        role_text = prompt.role_text
        continuing = bool(role_text) and self.continue_final_message is not False
        if role_text and not continuing and reason is not None:
            raise ValueError(cannot_continue(role_text, self.where, missed=reason, wrote=wrote))
        try:
            response = self._spec_request(prompt, params, continuing)
        except ValueError:
            if not continuing or reason is not None:
                raise
            continuing = False  # the server refused to continue: open the turn afresh
            response = self._spec_request(prompt, params, continuing)
        spec = spec_output(response, role_text if continuing else "", sampling)
        self.specs.put(prompt.turn, spec)
        self.count(response.usage)
        meta = {"api_spec": {"served": False, "call": "fallback" if reason else "speculative",
                             "reason": reason}}
        got = serve(spec, role_text, params.stop, params.max_new_tokens, sampling)
        if isinstance(got, Served):
            yield got.text
            meta["api_spec"]["value_tokens"] = got.completion_tokens
            return result_from(got.text, got.finish_reason, response.usage, api_calls=1,
                               matched_stop=got.matched_stop, **meta)
        if got == MISMATCH:  # only when the call opened the turn afresh
            raise ValueError(cannot_continue(role_text, self.where, missed=MISMATCH,
                                             wrote=spec.text))
        # The value is longer than the speculative output: call for this gen alone.
        meta["api_spec"]["reason"] = got
        request = self.chat_request(prompt, params)
        return (yield from self.stream(handle, request, prompt, api_calls=2, **meta))

    def _spec_request(self, prompt: Prompt, params: Any, continuing: bool) -> Any:
        request = self.chat_request(prompt, params, continuing)
        request.pop("stop", None)
        request["max_tokens"] = prompt.api_spec_tokens
        return self.create(request, prompt, logprobs=True)

    def _served_result(self, got: Served) -> Any:
        return result_from(got.text, got.finish_reason, None, api_calls=0,
                           matched_stop=got.matched_stop,
                           api_spec={"served": True, "value_tokens": got.completion_tokens,
                                     "saved_prompt_tokens": got.prompt_tokens})
