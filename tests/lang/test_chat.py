"""Role pieces read off chat templates: the default model's, a Llama-3 style one, none."""

from __future__ import annotations

import jinja2
import pytest

from lmnb.lang.chat import ChatTemplate

LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] }}"
    "{{ '<|eot_id|>' }}"
    "{% endfor %}"
)

ALTERNATING = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('no system role') }}{% endif %}"
    "{{ '[' + m['role'] + '] ' + m['content'] + '\n' }}{% endfor %}"
)


class JinjaTokenizer:
    def __init__(self, template: str | None) -> None:
        self.chat_template = template

    def apply_chat_template(self, messages, tokenize=False):
        def raise_exception(message):
            raise ValueError(message)

        env = jinja2.Environment()
        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template).render(messages=messages, bos_token="<BOS>")


def render(template: ChatTemplate, messages: list[dict[str, str]]) -> str:
    head = template.head if messages[0]["role"] != "system" else ""
    return head + "".join(
        template.prefix(m["role"]) + m["content"] + template.suffix(m["role"]) for m in messages
    )


CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_default_model_template_round_trips(runtime, messages):
    hf = runtime.tokenizer.hf
    template = ChatTemplate.from_tokenizer(hf)
    assert template.prefix("assistant") == "<|im_start|>assistant\n"
    assert "SmolLM" in template.head
    assert render(template, messages) == hf.apply_chat_template(messages, tokenize=False)


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_llama3_style_template_puts_bos_in_the_head(messages):
    tokenizer = JinjaTokenizer(LLAMA3)
    template = ChatTemplate.from_tokenizer(tokenizer)
    assert template.head == "<BOS>"
    assert template.prefix("user") == "<|start_header_id|>user<|end_header_id|>\n\n"
    assert template.suffix("user") == "<|eot_id|>"
    if messages[0]["role"] == "system":
        assert template.prefix("system").startswith("<BOS>")
    assert render(template, messages) == tokenizer.apply_chat_template(messages)


def test_template_without_a_system_role_falls_back_for_that_role_only():
    template = ChatTemplate.from_tokenizer(JinjaTokenizer(ALTERNATING))
    assert template.prefix("user") == "[user] "
    assert template.prefix("system") == "SYSTEM: "


def test_no_template_gives_plain_roles():
    template = ChatTemplate.from_tokenizer(JinjaTokenizer(None))
    assert (template.prefix("user"), template.suffix("user"), template.head) == ("USER: ", "\n", "")
