"""Sampling parameters: one frozen dataclass per request.

Owns the names and defaults of every per-request knob. Knows nothing of the model or the
scheduler. Parameter sets merge with `dataclasses.replace` (see `SamplingParams.merged`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    # logprobs of prompt tokens from this position on (None: none); of output tokens when True.
    logprob_start_len: int | None = None
    return_logprobs: bool = False
    # constrained decoding (at most one of these)
    regex: str | None = None
    json_schema: str | None = None
    choices: tuple[str, ...] | None = None
    jump_forward: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Normalise the forms users write into the canonical frozen ones.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", _as_tuple("stop", self.stop))
        if isinstance(self.stop_token_ids, int):
            object.__setattr__(self, "stop_token_ids", (self.stop_token_ids,))
        elif not isinstance(self.stop_token_ids, tuple):
            object.__setattr__(self, "stop_token_ids",
                               _as_tuple("stop_token_ids", self.stop_token_ids))
        if self.choices is not None and not isinstance(self.choices, tuple):
            object.__setattr__(self, "choices", _as_tuple("choices", self.choices))
        if self.json_schema is not None and not isinstance(self.json_schema, str):
            object.__setattr__(self, "json_schema", _schema_to_str(self.json_schema))
        self.validate()

    def validate(self) -> None:
        """Check every field's type and range; the error names the field (TypeError for a
        wrong type, ValueError for a wrong value)."""
        _int("max_new_tokens", self.max_new_tokens, lo=0)
        _int("min_new_tokens", self.min_new_tokens, lo=0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}"
            )
        _real("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        _real("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _int("top_k", self.top_k, lo=0)
        for s in self.stop:
            if not isinstance(s, str):
                raise TypeError(f"stop must hold strings, got {s!r} ({type(s).__name__})")
            if not s:
                raise ValueError("stop strings must be non-empty, got ''")
        for t in self.stop_token_ids:
            _int("each of stop_token_ids", t, lo=0)
        for name in ("ignore_eos", "return_logprobs", "jump_forward"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.seed is not None:
            _int("seed", self.seed, lo=0, hi=2**64 - 1)
        if self.logprob_start_len is not None:
            _int("logprob_start_len", self.logprob_start_len, lo=0)
        for name in ("regex", "json_schema"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                kind = type(getattr(self, name)).__name__
                raise TypeError(f"{name} must be a string, got {kind}")
        if self.choices is not None:
            for c in self.choices:
                if not isinstance(c, str):
                    raise TypeError(f"choices must hold strings, got {c!r} ({type(c).__name__})")
        if not isinstance(self.extra, dict):
            raise TypeError(f"extra must be a dict, got {type(self.extra).__name__}")
        constraints = [self.regex, self.json_schema, self.choices]
        if sum(c is not None for c in constraints) > 1:
            raise ValueError("give at most one of regex, json_schema and choices")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def constrained(self) -> bool:
        return self.regex is not None or self.json_schema is not None or self.choices is not None

    def merged(self, **overrides: Any) -> SamplingParams:
        """A copy with the given fields replaced; `None` values leave a field as it is."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _schema_to_str(schema: Any) -> str:
    """A JSON schema given as a dict or a pydantic model class, as canonical JSON text."""
    if hasattr(schema, "model_json_schema"):
        schema = schema.model_json_schema()
    return json.dumps(schema)


def _as_tuple(name: str, value: Any) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (bytes, bytearray, dict)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a list or tuple, got {type(value).__name__}")
    return tuple(value)


def _int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    """value must be an int (not a bool, not a float) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _real(name: str, value: Any) -> None:
    """value must be a finite int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
