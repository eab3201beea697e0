"""The tokenizer wrapper: text <-> token ids without special tokens added, and chat templates.

Owns how lmnb calls the Hugging Face tokenizer. Knows nothing of the model or requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Tokenizer:
    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        self.hf = AutoTokenizer.from_pretrained(str(folder))
        self.eos_token_id: int = self.hf.eos_token_id
        self.vocab_size: int = len(self.hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        return self.hf.apply_chat_template(messages, tokenize=False, **kwargs)
