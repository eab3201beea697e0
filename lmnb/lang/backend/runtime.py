"""`Runtime`: the in-process backend, an `lmnb.runtime.Engine` in this process.

Owns the mapping from SGLang's `Runtime(...)` arguments to the engine's. Imports the runtime (and
so torch) only when a `Runtime` is made, so `import lmnb` stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from lmnb.lang.backend.base import Prompt, TokenBackend, prompt_ids
from lmnb.lang.chat import ChatTemplate

# SGLang's Runtime/ServerArgs names -> the engine's; values that only make sense on a cluster
# are accepted at their single-machine value and refused otherwise (see `_engine_kwargs`).
RENAMED = {"model_path": "model", "max_total_tokens": "max_tokens_in_cache",
           "schedule_policy": "policy", "max_running_requests": "max_running",
           "context_length": "max_context", "random_seed": "seed",
           "chunked_prefill_size": "chunk_tokens", "tokenizer_path": None}
SINGLE = {"tp_size": 1, "dp_size": 1, "pp_size": 1, "nnodes": 1, "node_rank": 0}
IGNORED = {"mem_fraction_static", "log_level", "log_level_http", "trust_remote_code",
           "disable_cuda_graph", "port", "host", "enable_metrics", "show_time_cost"}


def _engine_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """SGLang's arguments as the engine's; a value lmnb cannot honour is a clear error."""
    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in SINGLE:
            if value != SINGLE[name]:
                raise ValueError(f"Runtime({name}={value!r}): lmnb runs one engine on one device "
                                 f"({name} must be {SINGLE[name]}); to spread a program over a "
                                 "cluster, point RuntimeEndpoint at an SGLang server or router")
        elif name in IGNORED:
            continue
        elif name in RENAMED:
            if RENAMED[name] is not None:
                out[RENAMED[name]] = value
        elif name == "disable_radix_cache" or name in _ENGINE_ARGS:
            out[name] = value
        else:
            raise TypeError(f"Runtime() got an unknown argument {name!r}")
    if out.get("policy") == "lof":
        raise ValueError("Runtime(schedule_policy='lof') is not offered; use lpm, dfs-weight "
                         "or fcfs")
    return out


_ENGINE_ARGS = {"model", "dtype", "device", "max_tokens_in_cache", "policy", "chunk_tokens",
                "max_running", "max_context", "aging_steps", "seed", "deterministic"}


class Runtime(TokenBackend):
    """A local engine. `Runtime()` loads the default model; `Runtime(engine=e)` wraps one.

    Keyword arguments go to `lmnb.runtime.Engine` (`model`, `dtype`, `max_tokens_in_cache`,
    `policy`, `disable_radix_cache`, ...); SGLang's names are accepted too (`model_path`,
    `max_total_tokens`, `schedule_policy`, `tp_size=1`, `mem_fraction_static` (ignored: the
    pool is sized in tokens), ...).
    """

    def __init__(self, model: str | None = None, *, engine: Any = None, **kwargs: Any):
        if engine is None:
            from lmnb.runtime import Engine

            kwargs = _engine_kwargs(kwargs)
            engine = Engine(model=model or kwargs.pop("model", None), **kwargs)
        elif kwargs:
            raise TypeError(f"Runtime(engine=...) takes no other arguments, got {sorted(kwargs)}")
        self.engine = engine

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @cached_property
    def chat_template(self) -> ChatTemplate:
        return ChatTemplate.from_tokenizer(self.tokenizer.hf)

    def generate(self, prompt: Prompt | Sequence[int], params: Any) -> Any:
        return self.engine.generate(prompt_ids(prompt), params)

    def flush_cache(self) -> bool:
        self.engine.flush_cache()
        return True

    def stats(self) -> dict[str, Any]:
        return self.engine.stats()

    def get_server_info(self) -> dict[str, Any]:
        return {**self.engine.describe(), **self.engine.stats()}

    def shutdown(self) -> None:
        self.engine.shutdown()

    def __repr__(self) -> str:
        return f"Runtime({self.engine!r})"
