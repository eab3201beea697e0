"""`import lmnb` stays light, and the notebook extension entry point exists."""

from __future__ import annotations

import subprocess
import sys


def test_import_does_not_load_torch():
    code = "import sys, lmnb; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_sglang_names_are_exported():
    import lmnb as sgl

    names = [
        "function", "gen", "gen_int", "gen_string", "select", "system", "user", "assistant",
        "system_begin", "system_end", "user_begin", "user_end", "assistant_begin",
        "assistant_end", "set_default_backend", "Runtime", "flush_cache",
    ]  # fmt: skip
    assert all(callable(getattr(sgl, n)) for n in names)
