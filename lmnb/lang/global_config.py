"""`global_config`: SGLang's process-wide frontend settings (`sgl.global_config`), with the
attributes SGLang programs touch.

Honoured:
- `default_backend`: the default backend (the same one `set_default_backend` sets); reading it
  starts nothing (None until one is set or started), as in SGLang.
- `enable_precache_with_tracing` (True): `run_batch` of more than one item first puts the
  program's constant prefix, found by tracing, into the cache. False skips that prefill.
- `verbosity` (0): 2 prints each run's final text when its body ends, as SGLang does.

Accepted and without effect (lmnb has nothing they would change):
- `skip_special_tokens_in_output`, `spaces_between_special_tokens_in_out`: generated text never
  holds special tokens here (EOS and stop ids end a request and are not decoded).
- `enable_parallel_encoding`: SGLang's `concate_and_append` join splices the children's KV
  caches; lmnb appends the children's token ids, and the parent's next call extends them.

This module *is* the config object: its class is `GlobalConfig` (a module type), and
`global_config` names the module itself. So `from sglang.global_config import global_config`
under `sys.modules["sglang"] = lmnb` (see `sglang_alias`) and `lmnb.global_config` are one object
whichever way it was reached. Knows nothing of programs; reads the default backend through
`backend.default`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from lmnb.lang.backend import default


class GlobalConfig(types.ModuleType):
    """SGLang's `GlobalConfig` attributes; `default_backend` reads and sets lmnb's default."""

    verbosity: int = 0
    skip_special_tokens_in_output: bool = True
    spaces_between_special_tokens_in_out: bool = True
    enable_precache_with_tracing: bool = True
    enable_parallel_encoding: bool = True

    @property
    def default_backend(self) -> Any:
        return default.current_default_backend()

    @default_backend.setter
    def default_backend(self, backend: Any) -> None:
        default.set_default_backend(backend)

    def __repr__(self) -> str:
        names = ("verbosity", "default_backend", "enable_precache_with_tracing",
                 "enable_parallel_encoding", "skip_special_tokens_in_output",
                 "spaces_between_special_tokens_in_out")
        return "GlobalConfig(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in names) + ")"


sys.modules[__name__].__class__ = GlobalConfig
global_config: GlobalConfig = sys.modules[__name__]  # type: ignore[assignment]
