"""The public primitives, with SGLang's names and argument order.

Owns the constructors users call inside programs (`gen`, `select`, roles) and the module-level
backend helpers. Knows nothing of execution: each call returns an `ir` node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lmnb.lang.choices import ChoicesMethod, resolve_method
from lmnb.lang.function import Function
from lmnb.lang.ir import Expr, ExprList, Gen, RoleBegin, RoleEnd, Select, as_expr
from lmnb.lang.sampling import as_dtype, gen_regex, sampling_overrides


def function(
    func: Callable[..., Any] | None = None, num_api_spec_tokens: int | None = None
) -> Function | Callable[[Callable[..., Any]], Function]:
    """`@function` or `@function(num_api_spec_tokens=N)`: on an API backend (`OpenAI`), an
    assistant turn with several gens is asked for once, N tokens, and the later gens are matched
    in that output (API speculative execution); token backends ignore N."""
    if func is not None:
        return Function(func, num_api_spec_tokens=num_api_spec_tokens)
    return lambda f: Function(f, num_api_spec_tokens=num_api_spec_tokens)


def gen(
    name: str | None = None,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    n: int | None = None,
    stop: str | Sequence[str] | None = None,
    stop_token_ids: Sequence[int] | None = None,
    stop_regex: str | Sequence[str] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    ignore_eos: bool | None = None,
    return_logprob: bool | None = None,
    logprob_start_len: int | None = None,
    top_logprobs_num: int | None = None,
    return_text_in_logprobs: bool | None = None,
    dtype: type | str | None = None,
    choices: Sequence[str] | None = None,
    choices_method: ChoicesMethod | str | None = None,
    regex: str | None = None,
    json_schema: Any = None,
) -> Gen | Select:
    """Generate into variable `name`; unset arguments fall back to the run's defaults.

    With `choices`, this is `select`. `dtype` (int, float, bool, str) becomes a regex.
    """
    if choices:
        return select(name, choices, temperature or 0.0, choices_method)
    args = dict(locals())
    for key in ("name", "choices", "choices_method", "dtype"):
        del args[key]
    overrides = sampling_overrides(**args)
    if dtype is None:
        return Gen(name, overrides)
    if regex is not None:
        raise ValueError("give either dtype or regex, not both")
    dtype = as_dtype(dtype)
    return Gen(name, {**overrides, "regex": gen_regex(dtype)}, dtype)


def gen_int(name: str | None = None, max_tokens: int | None = None, **kwargs: Any) -> Gen | Select:
    return gen(name, max_tokens, dtype=int, **kwargs)


def gen_string(
    name: str | None = None, max_tokens: int | None = None, **kwargs: Any
) -> Gen | Select:
    return gen(name, max_tokens, dtype=str, **kwargs)


def select(
    name: str | None = None,
    choices: Sequence[str] | None = None,
    temperature: float = 0.0,
    choices_method: ChoicesMethod | str | None = None,
) -> Select:
    """Pick the most likely of `choices` (see `lmnb.lang.choices`); all scores go to the meta
    info."""
    if not choices:
        raise ValueError("select needs a non-empty list of choices")
    return Select(name, tuple(choices), resolve_method(choices_method), temperature)


def _role(role: str, expr: object = None) -> ExprList:
    if expr is None:
        return ExprList((RoleBegin(role), RoleEnd(role)))
    return ExprList((RoleBegin(role), as_expr(expr), RoleEnd(role)))


def system(expr: str | Expr | None = None) -> ExprList:
    return _role("system", expr)


def user(expr: str | Expr | None = None) -> ExprList:
    return _role("user", expr)


def assistant(expr: str | Expr | None = None) -> ExprList:
    return _role("assistant", expr)


def system_begin() -> RoleBegin:
    return RoleBegin("system")


def system_end() -> RoleEnd:
    return RoleEnd("system")


def user_begin() -> RoleBegin:
    return RoleBegin("user")


def user_end() -> RoleEnd:
    return RoleEnd("user")


def assistant_begin() -> RoleBegin:
    return RoleBegin("assistant")


def assistant_end() -> RoleEnd:
    return RoleEnd("assistant")
