"""Reading a request body: JSON parsing and typed field access that names the field on failure.

Owns the checks every route shares (the body is a JSON object, a field has the right type,
fields the server does not implement are refused unless they hold their neutral value).
Value ranges of sampling parameters are the runtime's to check (`SamplingParams.validate`).
Knows nothing of the engine or of either API's response shapes.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.requests import Request

from lmnb.server.errors import BadRequest


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object (NaN and Infinity parse, so that the field check names them)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, got {_kind(body)}")
    return body


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def get_int(body: Mapping[str, Any], name: str, default: Any = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise BadRequest(f"{name} must be an integer, got {json.dumps(value)}", name)
    return int(value)


def get_number(body: Mapping[str, Any], name: str, default: Any = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BadRequest(f"{name} must be a number, got {json.dumps(value)}", name)
    return value


def get_bool(body: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, got {json.dumps(value)}", name)
    return value


def get_str(body: Mapping[str, Any], name: str, default: Any = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string, got {_kind(value)}", name)
    return value


def get_dict(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{name} must be an object, got {_kind(value)}", name)
    return value


def get_stop(body: Mapping[str, Any], name: str = "stop") -> list[str]:
    """A stop field: null, one string or a list of strings."""
    value = body.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise BadRequest(f"{name} must be a string or a list of strings", name)
    return value


def get_int_list(body: Mapping[str, Any], name: str) -> list[int]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(_is_int(t) for t in value):
        raise BadRequest(f"{name} must be a list of integers", name)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_id_list(value: Any) -> bool:
    """A non-empty list of token ids (ints)."""
    return isinstance(value, list) and bool(value) and all(_is_int(t) for t in value)


def refuse_unknown(body: Mapping[str, Any], known: Iterable[str], neutral: Mapping[str, Any],
                   where: str = "") -> None:
    """Refuse fields that are neither known nor, for fields accepted but not implemented, at
    their neutral value (None is always neutral); `neutral[name] is ANY` takes any value."""
    known = set(known)
    for name, value in body.items():
        if name in known or value is None:
            continue
        label = f"{where}{name}"
        if name not in neutral:
            raise BadRequest(f"unknown field {label!r}", label)
        if neutral[name] is not ANY and value != neutral[name] and value not in ([], {}, ""):
            raise BadRequest(
                f"{label}={json.dumps(value)} is not supported by lmnb "
                f"(only {json.dumps(neutral[name])})", label)


ANY: Any = object()
