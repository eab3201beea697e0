"""lmnb: LM programs in notebooks, with SGLang's frontend names (`import lmnb as sgl` works).

This module stays light: importing it loads no torch. The runtime (and the default model) start
on first use, or when a `Runtime` is made.
"""

import importlib

from lmnb.lang.api import (
    assistant,
    assistant_begin,
    assistant_end,
    function,
    gen,
    gen_int,
    gen_string,
    select,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
)
from lmnb.lang.backend import (
    Backend,
    OpenAI,
    Runtime,
    RuntimeEndpoint,
    flush_cache,
    get_default_backend,
    get_server_info,
    set_default_backend,
)
from lmnb.lang.choices import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from lmnb.lang.errors import MissingVariableError, ProgramError, RoleError
from lmnb.lang.function import Function
from lmnb.lang.global_config import global_config
from lmnb.lang.sglang_alias import install as _install_sglang_alias
from lmnb.lang.state import ForkGroup, ProgramState

__version__ = "0.1.0"

_install_sglang_alias()  # `sys.modules["sglang"] = lmnb` then resolves `sglang.lang.ir` etc.

__all__ = [
    "Backend",
    "ForkGroup",
    "Function",
    "MissingVariableError",
    "OpenAI",
    "ProgramError",
    "ProgramState",
    "RoleError",
    "Runtime",
    "RuntimeEndpoint",
    "assistant",
    "assistant_begin",
    "assistant_end",
    "flush_cache",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "get_default_backend",
    "get_server_info",
    "global_config",
    "greedy_token_selection",
    "load_ipython_extension",
    "select",
    "set_default_backend",
    "system",
    "system_begin",
    "system_end",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
    "user",
    "user_begin",
    "user_end",
]


def load_ipython_extension(ip: object) -> None:
    """`%load_ext lmnb`: registers the notebook magics (imported only now)."""
    magics = importlib.import_module("lmnb.magics")
    magics.load_ipython_extension(ip)
