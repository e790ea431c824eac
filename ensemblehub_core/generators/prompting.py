"""`TokenizerPrompt`: how a local member (transformers or vLLM) turns a conversation into prompt tokens.

Both local backends hold a Hugging Face tokenizer and render the same way: the tokenizer's chat template, or a
``{input}`` template for base models, with the request's tools rendered by the template when it knows tools and
given as a system message otherwise. One mixin, so a member answers the same prompt whichever engine runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ensemblehub_core.exceptions import InputError
from ensemblehub_core.tools import ToolSpec, messages_with_tool_text, with_system_note
from ensemblehub_core.types import Message

__all__ = ["TokenizerPrompt", "render_plain"]


def render_plain(messages: Sequence[Message]) -> str:
    """Flatten a conversation for a model without a chat template.

    A single user message is passed as it is; longer conversations become ``Role: text`` paragraphs.
    """
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].content
    return "\n\n".join(f"{m.role.capitalize()}: {m.content}" for m in messages)


class TokenizerPrompt:
    """Mixin for generators that own a Hugging Face tokenizer (``self.tokenizer``) and a name (``self.name``)."""

    name: str
    tokenizer: Any
    prompt_format: str
    system_prompt: str | None
    native_tools: bool
    context_length: int

    def setup_prompt(
        self,
        source: str,
        has_chat_template: bool,
        context_length: int,
        prompt_format: str | None,
        system_prompt: str | None,
    ) -> None:
        """Check and keep the prompt settings (call from ``__init__`` once ``self.tokenizer`` is set).

        Raises:
            InputError: ``prompt_format`` is 'chat' for a model without a chat template, or a template
                without ``{input}``.
        """
        fmt = prompt_format or ("chat" if has_chat_template else "{input}")
        if fmt == "chat" and not has_chat_template:
            raise InputError(
                f"member '{self.name}': prompt_format 'chat' needs a chat template, and {source} has none; "
                "set prompt_format to a template with {input}, e.g. 'Question: {input}\\nAnswer:'"
            )
        if fmt != "chat" and "{input}" not in fmt:
            raise InputError(f"member '{self.name}': prompt_format must be 'chat' or contain {{input}}, got {fmt!r}")
        self.prompt_format = fmt
        self.system_prompt = system_prompt
        self.context_length = context_length
        # A template that mentions tools renders them (and tool turns) itself; others get them as text.
        template = str(getattr(self.tokenizer, "chat_template", "") or "")
        self.native_tools = fmt == "chat" and "tool" in template

    def render_prompt(self, messages: Sequence[Message], tools: ToolSpec | None = None) -> str:
        """The prompt text this member sees before the assistant's answer.

        Args:
            messages: The conversation.
            tools: The request's tools: rendered by the chat template when it knows tools, else given as a
                system message; a forced choice adds the start of the call after the prompt.
        """
        shown = tools.visible if tools is not None else []
        chat = self.prompt_format == "chat"
        if chat and self.system_prompt and not any(m.role == "system" for m in messages):
            messages = [Message(role="system", content=self.system_prompt), *messages]
        if tools is not None and tools.instruction:
            messages = with_system_note(messages, tools.instruction)
        has_tool_turns = any(m.role == "tool" or m.tool_calls for m in messages)
        if not self.native_tools and (shown or has_tool_turns):
            messages = messages_with_tool_text(messages, shown)
        prefill = tools.prefill if tools is not None else ""
        if not chat:
            return self.prompt_format.replace("{input}", render_plain(messages)) + prefill
        extra = {"tools": shown} if self.native_tools and shown else {}
        text = self.tokenizer.apply_chat_template(
            [m.to_dict() for m in messages], tokenize=False, add_generation_prompt=True, **extra
        )
        return str(text) + prefill

    def encode_prompt(self, messages: Sequence[Message], tools: ToolSpec | None = None) -> list[int]:
        """Token ids of the prompt (special tokens from the template, or the tokenizer's BOS for plain text).

        Raises:
            InputError: the prompt does not fit the member's context.
        """
        text = self.render_prompt(messages, tools)
        ids = self.tokenizer.encode(text, add_special_tokens=self.prompt_format != "chat")
        if len(ids) >= self.context_length:
            raise InputError(
                f"member '{self.name}': the prompt is {len(ids)} tokens, longer than its context of "
                f"{self.context_length}; shorten the prompt or drop this member"
            )
        return list(ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of answer text (no special tokens)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def count_prompt_tokens(self, messages: Sequence[Message], tools: ToolSpec | None = None) -> int:
        """Tokens of the rendered prompt (as `encode_prompt`, without its context check)."""
        text = self.render_prompt(messages, tools)
        return len(self.tokenizer.encode(text, add_special_tokens=self.prompt_format != "chat"))
