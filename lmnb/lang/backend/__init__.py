"""Backends a program runs on, all behind the `Backend` protocol (`base.py`): `Runtime`
(in-process engine), `RuntimeEndpoint` (SGLang's native HTTP API: `lmnb serve` or an SGLang
server), `OpenAI` (any OpenAI-compatible server); and the default backend."""

from lmnb.lang.backend.base import Backend, Choice, Handle, Prompt, Result, TokenBackend
from lmnb.lang.backend.default import (
    current_default_backend,
    flush_cache,
    get_default_backend,
    get_server_info,
    set_default_backend,
)
from lmnb.lang.backend.openai import OpenAI
from lmnb.lang.backend.runtime import Runtime
from lmnb.lang.backend.runtime_endpoint import RuntimeEndpoint

__all__ = [
    "Backend",
    "Choice",
    "Handle",
    "OpenAI",
    "Prompt",
    "Result",
    "Runtime",
    "RuntimeEndpoint",
    "TokenBackend",
    "current_default_backend",
    "flush_cache",
    "get_default_backend",
    "get_server_info",
    "set_default_backend",
]
