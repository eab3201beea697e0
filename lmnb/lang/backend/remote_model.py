"""What a client can know of a remote server's model: its tokenizer, loaded here when the model
is on this machine, and its chat template.

Owns finding the tokenizer for `/get_model_info`'s `tokenizer_path`/`model_path` (the default
model by its name, else a local folder or `.gguf` path, through `lmnb.runtime.loader`, imported
only now: it loads torch and transformers), and the chat template's source, in order: the local
tokenizer's, a Jinja template the server exposes (`chat_template` in its model or server info),
a template named by the caller (`chatml`, `plain`), else ChatML with a warning. Knows nothing of
HTTP or requests.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmnb.lang.chat import ChatTemplate

CHATML = ChatTemplate(
    prefixes={r: f"<|im_start|>{r}\n" for r in ("system", "user", "assistant")},
    suffixes={r: "<|im_end|>\n" for r in ("system", "user", "assistant")},
)
NAMED_TEMPLATES = {"chatml": CHATML, "plain": ChatTemplate.plain()}


def find_tokenizer(model_info: dict[str, Any], choice: Any = "auto") -> tuple[Any, str]:
    """(tokenizer or None, why) for the server's model. `choice`: "auto" (the server's model,
    if it is on this machine), None/False (none: text mode), a model folder or `.gguf` path,
    or a tokenizer object (`encode`/`decode`)."""
    if choice is None or choice is False:
        return None, "text mode: asked for (tokenizer=False)"
    if hasattr(choice, "encode") and hasattr(choice, "decode"):
        return choice, "token ids: the tokenizer given"
    if choice != "auto":
        return _load(os.fspath(choice)), f"token ids: the tokenizer of {choice}"
    from lmnb.runtime.loader import DEFAULT_MODEL_NAME

    names = [model_info.get(k) for k in ("tokenizer_path", "model_path")]
    for name in dict.fromkeys(n for n in names if isinstance(n, str) and n):
        if Path(name).name == DEFAULT_MODEL_NAME:
            model = None
        elif Path(name).expanduser().exists():
            model = name
        else:
            continue
        try:
            return _load(model), f"token ids: {name} is on this machine"
        except (OSError, ValueError) as exc:
            warnings.warn(f"the server's model {name} looks local but its tokenizer did not "
                          f"load ({exc}); falling back to text mode", stacklevel=3)
    shown = next((n for n in names if n), "(unnamed)")
    return None, f"text mode: the server's model {shown} is not on this machine"


def _load(model: str | None) -> Any:
    from lmnb.runtime.loader import resolve
    from lmnb.runtime.tokenizer import Tokenizer

    return Tokenizer(resolve(model).folder)


def chat_template(tokenizer: Any, name: str | None, server_template: Callable[[], str | None],
                  where: str) -> tuple[ChatTemplate, str]:
    """(the template roles are written with, where it came from)."""
    if name is not None:
        if name not in NAMED_TEMPLATES:
            raise ValueError(f"chat_template_name must be one of {sorted(NAMED_TEMPLATES)}, "
                             f"got {name!r}")
        return NAMED_TEMPLATES[name], f"named: {name}"
    hf = getattr(tokenizer, "hf", None)
    if hf is not None:
        return ChatTemplate.from_tokenizer(hf), "the local tokenizer's"
    source = server_template()
    if source:
        return ChatTemplate.from_tokenizer(JinjaChat(source)), "the server's"
    warnings.warn(f"{where}: no local tokenizer and the server exposes no chat template, so "
                  "roles are written in ChatML (<|im_start|>role ... <|im_end|>); pass "
                  "chat_template_name='plain' or 'chatml' to choose", stacklevel=3)
    return CHATML, "ChatML (default)"


def is_jinja(value: Any) -> bool:
    return isinstance(value, str) and ("{%" in value or "{{" in value)


class JinjaChat:
    """A Jinja chat template rendered as transformers renders one (what `ChatTemplate` reads)."""

    def __init__(self, source: str) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.chat_template = source
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(source)

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False) -> str:
        return self._template.render(messages=messages, add_generation_prompt=False,
                                     bos_token="", eos_token="")


def _raise(message: str) -> None:
    raise ValueError(message)
