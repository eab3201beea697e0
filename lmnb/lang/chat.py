"""Chat roles as text: the prefix and suffix of each role, read off the tokenizer's template.

Owns `ChatTemplate`: what `system(...)`, `user(...)` and `assistant(...)` append around their
content, and the implicit head some templates put before a conversation that opens without a
system message (SmolLM2's default system prompt, Llama 3's BOS). The pieces are found by
rendering the tokenizer's own Jinja template around a sentinel, so a program's text is exactly
what the model was trained on. Knows nothing of states or token ids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
_SENTINEL = "\x00lmnb-content\x00"
_SYSTEM = {"role": "system", "content": "S"}
_USER = {"role": "user", "content": "U"}
# Conversations the sentinel message is appended to, tried in order: with a system message
# first (so that no default system prompt is inserted), then without (for templates that have
# no system role); each keeps roles alternating for templates that insist on it.
_HISTORIES = {
    "system": [[]],
    "user": [[_SYSTEM], []],
    "assistant": [[_SYSTEM, _USER], [_USER]],
}


@dataclass(frozen=True)
class ChatTemplate:
    prefixes: dict[str, str] = field(default_factory=dict)
    suffixes: dict[str, str] = field(default_factory=dict)
    head: str = ""  # before the first message when that message is not a system message

    def prefix(self, role: str) -> str:
        return self.prefixes.get(role, f"{role.upper()}: ")

    def suffix(self, role: str) -> str:
        return self.suffixes.get(role, "\n")

    @classmethod
    def plain(cls) -> ChatTemplate:
        """For tokenizers without a chat template: `USER: ...` lines."""
        return cls()

    @classmethod
    def from_tokenizer(cls, hf_tokenizer: Any) -> ChatTemplate:
        """Derive the pieces from a transformers tokenizer; `plain()` when it has no template."""
        if not getattr(hf_tokenizer, "chat_template", None):
            return cls.plain()

        def render(messages: list[dict[str, str]]) -> str:
            return hf_tokenizer.apply_chat_template(messages, tokenize=False)

        prefixes, suffixes = {}, {}
        for role in ROLES:
            for history in _HISTORIES[role]:
                try:
                    prefixes[role], suffixes[role] = _role_pieces(render, role, history)
                    break
                except Exception:  # the template rejects this conversation (e.g. a system role)
                    continue
        return cls(prefixes, suffixes, _head(render, prefixes.get("user", "")))


def _role_pieces(render: Any, role: str, history: list[dict[str, str]]) -> tuple[str, str]:
    before = render(history) if history else ""
    after = render([*history, {"role": role, "content": _SENTINEL}])
    start = len(os.path.commonprefix([before, after]))
    prefix, _, suffix = after[start:].partition(_SENTINEL)
    return prefix, suffix


def _head(render: Any, user_prefix: str) -> str:
    """What the template puts before a conversation that opens with a user message."""
    text = render([{"role": "user", "content": _SENTINEL}])
    opening = text[: text.index(_SENTINEL)]
    if user_prefix and opening.endswith(user_prefix):
        return opening[: -len(user_prefix)]
    return ""
