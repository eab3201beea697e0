"""`select` on an API model: the methods an OpenAI-compatible server may allow, tried in order.

- `prompt_logprobs` (completion models): each choice scored by the logprobs of its tokens after
  the state's text: one `/v1/completions` call with `echo=True, logprobs=1, max_tokens=0` over
  every choice, then the program's choices method (`token_length_normalized`, ...) as on a
  local runtime (a second call for the unconditional logprobs where the method needs them).
- `logit_bias` (completion models; SGLang's method): token by token, one `max_tokens=1` call
  with every still-possible choice's next token biased by +100, keeping the choices the model
  followed; the score is the number of tokens followed. Needs the server's tokenizer.
- `choices` / `json_schema`: one generation constrained to the choices (the `choices` extra
  body field, or a JSON schema whose one property is an enum of them); the answer is the pick.
- `speculation` (chat models with `num_api_spec_tokens`): the turn's speculative output
  already continues with one of the choices (the longest that does): no call.

A server's 4xx refusal of a method moves on to the next; meta info names the method used
(`method`) and the refusals (`refused`). Knows nothing of states; uses the backend's requests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from lmnb.lang.backend.api_call import check_chat_turn, server_message
from lmnb.lang.backend.base import Choice, Prompt
from lmnb.lang.choices import ChoicesMethod

# (index, meta, counts) or None where the method does not apply here
Picked = tuple[int, dict[str, Any], dict[str, int]] | None


class Refused(Exception):
    """The server refused this method's request (a 4xx other than authentication)."""


def default_methods(chat: bool) -> tuple[str, ...]:
    if chat:
        return ("speculation", "choices", "json_schema")
    return ("prompt_logprobs", "logit_bias", "choices")


def select(backend: Any, prompt: Prompt, choices: list[str], method: ChoicesMethod) -> Choice:
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("select choices must be non-empty strings")
    if backend.is_chat_model:
        check_chat_turn(prompt, "select")
    refused: list[str] = []
    for name in backend.select_methods:
        if name not in METHODS:
            raise ValueError(f"unknown select method {name!r}; known: {sorted(METHODS)}")
        try:
            picked = METHODS[name](backend, prompt, choices, method)
        except Refused as exc:
            refused.append(f"{name}: {exc}")
            continue
        if picked is not None:
            index, meta, counts = picked
            meta = {"choices": list(choices), "method": name, **meta}
            if refused:
                meta["refused"] = refused
            return Choice(index, [], meta, counts)
    raise ValueError(f"{backend.where} offers no way to select among {choices!r} "
                     f"(tried {', '.join(backend.select_methods)}): {'; '.join(refused)}")


def create(backend: Any, request: dict[str, Any], prompt: Prompt | None = None) -> Any:
    """One call; a 4xx refusal (not of the API key) becomes `Refused`, other errors the
    program's errors. Counted in the backend's token usage."""
    import openai

    try:
        response = backend.create(request, prompt)
    except (openai.BadRequestError, openai.NotFoundError, openai.UnprocessableEntityError) as exc:
        raise Refused(server_message(exc)) from None
    except openai.OpenAIError as exc:
        raise backend.describe(exc) from None
    backend.count(response.usage)
    return response


def counts_of(responses: list[Any]) -> dict[str, int]:
    from lmnb.lang.backend.api_call import cached_tokens

    usages = [r.usage for r in responses if r.usage is not None]
    return {"prompt_tokens": sum(u.prompt_tokens or 0 for u in usages),
            "cached_tokens": sum(cached_tokens(u) for u in usages),
            "completion_tokens": sum(u.completion_tokens or 0 for u in usages)}


def _count_meta(responses: list[Any]) -> dict[str, Any]:
    counts = counts_of(responses)
    return {"prompt_tokens": [counts["prompt_tokens"]], "cached_tokens": [counts["cached_tokens"]],
            "api_calls": len(responses)}


# ---- the methods ------------------------------------------------------------------------------


def by_prompt_logprobs(backend: Any, prompt: Prompt, choices: list[str],
                       method: ChoicesMethod) -> Picked:
    if backend.is_chat_model:
        return None
    if not prompt.text:
        raise ValueError("select needs some text before it to condition on")
    scoring = {"model": backend.model_name, "echo": True, "logprobs": 1, "max_tokens": 0,
               "temperature": 0}
    response = create(backend, {**scoring, "prompt": [prompt.text + c for c in choices]})
    logprobs = [_after(row.logprobs, len(prompt.text)) for row in _rows(response, choices)]
    responses = [response]
    unconditional = None
    if method.needs_unconditional:  # each choice given nothing; its first token scores 0
        alone = create(backend, {**scoring, "prompt": list(choices)})
        responses.append(alone)
        unconditional = [[0.0, *(lp or 0.0 for lp in row.logprobs.token_logprobs[1:])]
                         for row in _rows(alone, choices)]
    decision = method.decide(logprobs, unconditional)
    meta = {"scores": decision.scores,
            "normalized_prompt_logprobs": [sum(lp) / len(lp) for lp in logprobs],
            "input_token_logprobs": logprobs, "unconditional_token_logprobs": unconditional,
            **decision.meta, **_count_meta(responses)}
    return decision.index, meta, counts_of(responses)


def _rows(response: Any, choices: list[str]) -> list[Any]:
    rows = sorted(response.choices, key=lambda row: row.index)
    if len(rows) != len(choices) or any(row.logprobs is None for row in rows):
        raise Refused("the server did not return prompt logprobs for every choice")
    return rows


def _after(logprobs: Any, prefix_len: int) -> list[float]:
    """The logprobs of the tokens that end past `prefix_len` characters (a token straddling
    the boundary counts as the choice's first)."""
    offsets, tokens = logprobs.text_offset, logprobs.tokens
    picked = [lp or 0.0 for off, tok, lp in zip(offsets, tokens, logprobs.token_logprobs)
              if off + len(tok) > prefix_len]
    if not picked:
        raise Refused("the server's prompt logprobs do not cover the choice")
    return picked


def by_logit_bias(backend: Any, prompt: Prompt, choices: list[str],
                  method: ChoicesMethod) -> Picked:
    tokenizer = backend.logit_bias_tokenizer or _tiktoken_for(backend.model_name)
    if backend.is_chat_model or tokenizer is None:
        return None
    choice_ids = [tokenizer.encode(c) for c in choices]
    prefix = tokenizer.encode(prompt.text)
    alive, scores, responses = [True] * len(choices), [0] * len(choices), []
    for step in range(max(len(ids) for ids in choice_ids)):
        bias = {str(ids[step]): 100 for ids, ok in zip(choice_ids, alive) if ok}
        response = create(backend, {"model": backend.model_name, "prompt": prefix,
                                    "logit_bias": bias, "max_tokens": 1, "temperature": 0})
        responses.append(response)
        text = response.choices[0].text
        for i, ids in enumerate(choice_ids):
            if alive[i]:
                followed = tokenizer.decode([ids[step]]) == text
                scores[i] += followed
                alive[i] = followed and step < len(ids) - 1
        if sum(alive) <= 1 or not text:
            break
        prefix = prefix + tokenizer.encode(text)
    index = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return index, {"scores": scores, **_count_meta(responses)}, counts_of(responses)


def _tiktoken_for(model: str) -> Any:
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        return tiktoken.encoding_for_model(model)
    except KeyError:
        return None


def by_choices(backend: Any, prompt: Prompt, choices: list[str],
               method: ChoicesMethod) -> Picked:
    return _constrained(backend, prompt, choices, {"choices": tuple(choices)}, lambda t: t)


def by_json_schema(backend: Any, prompt: Prompt, choices: list[str],
                   method: ChoicesMethod) -> Picked:
    schema = {"type": "object", "properties": {"choice": {"type": "string", "enum": choices}},
              "required": ["choice"], "additionalProperties": False}
    longest = max(len(c) for c in choices) + 16

    def answer(text: str) -> str:
        try:
            return json.loads(text)["choice"]
        except (ValueError, KeyError, TypeError):
            return text

    return _constrained(backend, prompt, choices, {"json_schema": json.dumps(schema)}, answer,
                        extra_tokens=longest)


def _constrained(backend: Any, prompt: Prompt, choices: list[str], constraint: dict[str, Any],
                 answer: Callable[[str], str], extra_tokens: int = 0) -> Picked:
    from lmnb.runtime.params import SamplingParams

    # characters bound tokens from above: enough for the longest choice
    params = SamplingParams(max_new_tokens=max(len(c) for c in choices) + 2 + extra_tokens,
                            temperature=0.0, **constraint)
    if backend.is_chat_model:
        request = backend.chat_request(prompt, params)
    else:
        request = backend.completion_request(prompt.text, params)
    response = create(backend, request, prompt)
    row = response.choices[0]
    text = answer((row.message.content if backend.is_chat_model else row.text) or "")
    if text not in choices:
        raise Refused(f"the constrained answer {text!r} is not one of the choices")
    index = choices.index(text)
    scores = [float(i == index) for i in range(len(choices))]
    return index, {"scores": scores, "answer": text, **_count_meta([response])}, counts_of(
        [response])


def by_speculation(backend: Any, prompt: Prompt, choices: list[str],
                   method: ChoicesMethod) -> Picked:
    spec = backend.specs.get(prompt.turn) if prompt.api_spec_tokens > 0 else None
    if spec is None or not spec.text.startswith(prompt.role_text):
        return None
    rest = spec.text[len(prompt.role_text):]
    matching = [i for i, c in enumerate(choices) if rest.startswith(c)]
    if not matching:
        return None
    index = max(matching, key=lambda i: len(choices[i]))
    backend.token_usage.add(saved_api_calls=1, saved_prompt_tokens=spec.prompt_tokens)
    scores = [float(i == index) for i in range(len(choices))]
    meta = {"scores": scores, "prompt_tokens": [0], "cached_tokens": [0], "api_calls": 0,
            "api_spec": {"served": True}}
    return index, meta, {"prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0}


METHODS: dict[str, Callable[..., Picked]] = {
    "speculation": by_speculation,
    "prompt_logprobs": by_prompt_logprobs,
    "logit_bias": by_logit_bias,
    "choices": by_choices,
    "json_schema": by_json_schema,
}
