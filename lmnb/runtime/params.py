"""Sampling parameters: one frozen dataclass per request.

Owns the names and defaults of every per-request knob. Knows nothing of the model or the
scheduler. Parameter sets merge with `dataclasses.replace` (see `SamplingParams.merged`).
"""

from __future__ import annotations

import dataclasses
import json
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
            object.__setattr__(self, "stop", tuple(self.stop or ()))
        if isinstance(self.stop_token_ids, int):
            object.__setattr__(self, "stop_token_ids", (self.stop_token_ids,))
        elif not isinstance(self.stop_token_ids, tuple):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        if self.choices is not None and not isinstance(self.choices, tuple):
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.json_schema is not None and not isinstance(self.json_schema, str):
            object.__setattr__(self, "json_schema", _schema_to_str(self.json_schema))
        self.validate()

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.min_new_tokens < 0 or self.min_new_tokens > max(self.max_new_tokens, 0):
            raise ValueError(
                f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
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
