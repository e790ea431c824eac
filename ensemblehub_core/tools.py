"""Tool calling: the request's tools, how each member sees them, and reading calls back out of the answer.

An ensemble writes text, whatever its strategy; tool calls are text too. Members are shown the tools in their
own format (a chat template that knows tools gets them as ``tools=``; any other model gets the same
instructions as a system message), and every candidate is text in one convention, the Hermes/Qwen2.5 one::

    <tool_call>
    {"name": "get_weather", "arguments": {"location": "Paris"}}
    </tool_call>

Members whose backend returns native tool calls (API models) write them back in that form with
`format_tool_call`, so segment scorers and votes compare like with like. When the answer is complete the calls
are parsed out of the accepted text (`parse_tool_calls`; bare JSON naming an offered tool counts too).

A forced ``tool_choice`` (``required`` or a tool's name) is honoured by prefilling the start of the call in
the prompt of local members (``ToolSpec.prefill``): the model then has to continue a call, which is what a
constrained decoder would enforce for its first tokens.

The request's `ToolSpec` travels with the run (``RunContext.tools``): strategies give it to the members' sessions
when they open them, to one-shot calls on their ``SegmentRequest`` and to scorers on their ``ScoreRequest``.
Judges and selectors, which write their own prompts, are given none.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ensemblehub_core.exceptions import InputError
from ensemblehub_core.types import Message, ToolCall

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ToolCallFilter",
    "ToolSpec",
    "extract_tool_calls",
    "format_tool_call",
    "messages_with_tool_text",
    "normalize_tool",
    "parse_tool_calls",
    "tool_call_signature",
    "tools_system_prompt",
    "with_system_note",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_CHOICE_ALIASES = {"any": "required", "auto": "auto", "none": "none", "required": "required"}
_FENCE = re.compile(r"```[a-zA-Z]*[ \t]*\n?")


def normalize_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """One tool in the OpenAI format, from that format or from a bare ``{"name", "parameters"}`` function.

    Raises:
        InputError: the tool has no name or its parameters are not a JSON-schema object.
    """
    fn = tool.get("function", tool) if tool.get("type", "function") == "function" else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise InputError("a tool must be {'type': 'function', 'function': {'name': ..., 'parameters': ...}}, "
                         f"got {dict(tool)!r}")
    params = fn.get("parameters") or {"type": "object", "properties": {}}
    _check_parameters(fn["name"], params)
    out: dict[str, Any] = {"name": fn["name"], "parameters": dict(params)}
    if fn.get("description"):
        out["description"] = str(fn["description"])
    return {"type": "function", "function": out}


def _check_parameters(name: str, params: Any) -> None:
    """The top of a tool's JSON schema: an object with named properties (each a schema) and required names."""
    where = f"tool '{name}': 'parameters'"
    if not isinstance(params, Mapping):
        raise InputError(f"{where} must be a JSON schema object")
    if params.get("type", "object") != "object":
        raise InputError(f"{where} must be a schema of type 'object' (the arguments), not {params.get('type')!r}")
    props = params.get("properties", {})
    if not isinstance(props, Mapping) or not all(isinstance(v, Mapping | bool) for v in props.values()):
        raise InputError(f"{where}.properties must map each argument's name to its JSON schema")
    required = params.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise InputError(f"{where}.required must be a list of argument names")


@dataclass(kw_only=True, frozen=True)
class ToolSpec:
    """The tools of one request and how they must be used.

    Attributes:
        tools: The tools, OpenAI format.
        choice: ``auto`` (the model decides), ``none`` (tools hidden), ``required`` (some call must be made)
            or the name of the tool that must be called.
    """

    tools: list[dict[str, Any]] = field(default_factory=list)
    choice: str = "auto"

    @classmethod
    def from_params(
        cls, tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any = None
    ) -> ToolSpec | None:
        """Validate the ``tools`` / ``tool_choice`` request parameters (None when no tools are offered).

        ``tool_choice`` may be ``auto``, ``none``, ``required`` (``any`` and True mean the same), a tool's
        name, or ``{"type": "function", "function": {"name": ...}}``.

        Raises:
            InputError: malformed tools, or a choice that names no offered tool.
        """
        if tools is not None and (isinstance(tools, str | Mapping) or not isinstance(tools, Sequence)):
            raise InputError("'tools' must be a list of tools")
        specs = [normalize_tool(t) for t in tools or []]
        choice = _normalize_choice(tool_choice)
        if not specs:
            if choice in ("auto", "none"):
                return None
            raise InputError(f"tool_choice '{choice}' needs tools; pass them in 'tools'")
        names = [t["function"]["name"] for t in specs]
        if choice not in _CHOICE_ALIASES.values() and choice not in names:
            raise InputError(
                f"tool_choice names tool '{choice}', which is not offered; tools: {', '.join(names)}"
            )
        return cls(tools=specs, choice=choice)

    @property
    def names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    @property
    def visible(self) -> list[dict[str, Any]]:
        """The tools members are shown (none for ``tool_choice='none'``)."""
        return [] if self.choice == "none" else self.tools

    @property
    def forced_name(self) -> str | None:
        """The tool that must be called, when the choice (or a single offered tool) determines it."""
        if self.choice == "required" and len(self.tools) == 1:
            return self.names[0]
        return self.choice if self.choice in self.names else None

    @property
    def instruction(self) -> str:
        """A system note for a forced choice among several tools (the prefill cannot name the tool)."""
        if self.choice == "required" and self.forced_name is None:
            return f"Answer with a call to one of these functions: {', '.join(self.names)}."
        return ""

    @property
    def prefill(self) -> str:
        """The start of the answer that forces a call (empty unless the choice forces one)."""
        if self.choice not in ("required", *self.names):
            return ""
        name = self.forced_name
        if name is None:
            return f'{TOOL_CALL_OPEN}\n{{"name": "'
        # Through the arguments' opening brace (and a key's opening quote when the tool requires one): left
        # earlier, small models write a bare value or unquoted keys.
        fn = next(t["function"] for t in self.tools if t["function"]["name"] == name)
        key = '"' if fn["parameters"].get("required") else ""
        return f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {{{key}'


def _normalize_choice(choice: Any) -> str:
    if choice is None:
        return "auto"
    if choice is True:
        return "required"
    if isinstance(choice, Mapping):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else choice.get("name")
        if isinstance(name, str) and name:
            return name
        kind = choice.get("type")
        if isinstance(kind, str) and kind in _CHOICE_ALIASES:
            return _CHOICE_ALIASES[kind]
        raise InputError(f"tool_choice {dict(choice)!r} names no tool")
    if isinstance(choice, str) and choice:
        return _CHOICE_ALIASES.get(choice, choice)
    raise InputError(f"tool_choice must be auto, none, required or a tool's name, got {choice!r}")


# -- what members see --------------------------------------------------------------------------------------
def tools_system_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """Tool instructions for a model whose chat template does not render tools (the Qwen2.5 wording)."""
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{listing}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        f"{TOOL_CALL_OPEN}{TOOL_CALL_CLOSE} XML tags:\n"
        f'{TOOL_CALL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{TOOL_CALL_CLOSE}'
    )


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """A call in the text convention every candidate uses."""
    body = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def with_system_note(messages: Sequence[Message], note: str) -> list[Message]:
    """The conversation with ``note`` appended to its system message (one is added when there is none)."""
    out = list(messages)
    if out and out[0].role == "system":
        out[0] = Message(role="system", content=f"{out[0].content}\n\n{note}" if out[0].content else note)
    else:
        out.insert(0, Message(role="system", content=note))
    return out


def messages_with_tool_text(messages: Sequence[Message], tools: Sequence[Mapping[str, Any]]) -> list[Message]:
    """The conversation for a model that knows no tool format: tools in the system message, calls and results
    as text (an assistant turn's calls as ``<tool_call>`` blocks, a tool result as a user turn)."""
    out: list[Message] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            calls = [c.get("function", c) for c in m.tool_calls]
            text = "\n".join(
                format_tool_call(str(c.get("name")), _arguments(c.get("arguments")) or {}) for c in calls
            )
            out.append(Message(role="assistant", content="\n".join(p for p in (m.content, text) if p)))
        elif m.role == "tool":
            out.append(Message(role="user", content=f"<tool_response>\n{m.content}\n</tool_response>"))
        else:
            out.append(Message(role=m.role, content=m.content, name=m.name))
    return with_system_note(out, tools_system_prompt(tools)) if tools else out


# -- reading calls back ------------------------------------------------------------------------------------
def _arguments(raw: Any) -> dict[str, Any] | None:
    """Arguments as a dict (models and APIs give a dict or a JSON string); None when they are neither."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return None
    return dict(raw) if isinstance(raw, Mapping) else None


def _as_calls(obj: Any, names: Sequence[str] | None) -> list[ToolCall] | None:
    """``obj`` (one call object or a list of them) as calls; None when it is not a call."""
    items = obj if isinstance(obj, list) else [obj]
    calls = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            return None
        if names is not None and item["name"] not in names:
            return None
        args = _arguments(item.get("arguments", item.get("parameters")))
        if args is None:
            return None
        calls.append(ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", name=item["name"], arguments=args))
    return calls or None


def parse_tool_calls(text: str, spec: ToolSpec | None = None) -> tuple[str, list[ToolCall]]:
    """Split an answer into its text and its tool calls.

    ``<tool_call>`` blocks are calls whatever the name (an unknown name is the caller's to report); a
    whole answer that is bare JSON (optionally fenced) is a call only when it names an offered tool, so a
    JSON answer to a question is left alone. A block whose JSON does not parse (e.g. cut by ``max_tokens``)
    stays text.

    Returns:
        The text with the call blocks removed, and the calls in order.
    """
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    kept: list[str] = []
    pos = 0
    while (start := text.find(TOOL_CALL_OPEN, pos)) >= 0:
        body = start + len(TOOL_CALL_OPEN)
        while body < len(text) and text[body].isspace():
            body += 1
        try:
            obj, end = decoder.raw_decode(text, body)
        except json.JSONDecodeError:
            break
        found = _as_calls(obj, None)
        if found is None:
            break
        rest = text[end:]
        stripped = rest.lstrip()
        if stripped.startswith(TOOL_CALL_CLOSE):
            end += len(rest) - len(stripped) + len(TOOL_CALL_CLOSE)
        kept.append(text[pos:start])
        calls.extend(found)
        pos = end
    if calls:
        kept.append(text[pos:])
        return "".join(kept).strip(), calls
    if spec is not None and spec.visible:
        return _bare_call(text, spec)
    return text, []


def _bare_call(text: str, spec: ToolSpec) -> tuple[str, list[ToolCall]]:
    """Calls written as plain JSON objects (or a fenced JSON block) at the start of the answer, one after
    another; what follows them is text."""
    body = text.lstrip()
    fenced = _FENCE.match(body)
    if fenced:
        body = body[fenced.end() :]
    calls: list[ToolCall] = []
    while True:
        try:
            obj, end = json.JSONDecoder().raw_decode(body)
        except json.JSONDecodeError:
            break
        found = _as_calls(obj, spec.names)
        if not found:
            break
        calls.extend(found)
        body = body[end:].lstrip()
    if not calls:
        return text, []
    if fenced:
        body = body.removeprefix("```")
    return body.strip(), calls


def tool_call_signature(call: ToolCall) -> str:
    """A key under which equal calls meet: the name plus the arguments as canonical JSON (keys sorted,
    surrounding whitespace of string values dropped). Vote-style strategies count these."""

    def norm(v: Any) -> Any:
        if isinstance(v, str):
            return v.strip()
        if isinstance(v, Mapping):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        return v

    return f"{call.name}:{json.dumps(norm(call.arguments), sort_keys=True, ensure_ascii=False)}"


def extract_tool_calls(text: str, tools: ToolSpec | None = None) -> str | None:
    """A vote extractor (``extractor: ensemblehub_core.tools:extract_tool_calls``): the signatures of the
    calls one full answer makes under the request's tools, or None when it makes none.

    Answers that make the same calls (same names, same normalised arguments) get one key, so a vote
    strategy counts them together and keeps one of them. The strategy passes the request's tools (see
    `ensemblehub_core.answers.with_tools`).

    Args:
        text: One full answer.
        tools: The request's tools (None: none offered, so the answer makes no call).
    """
    spec = tools
    if spec is None or not spec.visible:
        return None
    raw = text if not spec.prefill or text.lstrip().startswith(TOOL_CALL_OPEN) else spec.prefill + text
    _, calls = parse_tool_calls(raw, spec)
    return "; ".join(tool_call_signature(c) for c in calls) or None


class ToolCallFilter:
    """Streams an answer's text while holding back what may be a tool call, and parses the calls at the end.

    Text before a ``<tool_call>`` tag (or a tag split across segments) passes through as it is decided; an
    answer that starts like bare JSON is held until the end, when `finish` tells call from text.

    Args:
        spec: The request's tools (its ``prefill`` counts as the start of the answer).
    """

    def __init__(self, spec: ToolSpec) -> None:
        self.spec = spec
        self.raw = ""
        self.sent = 0
        self.calls: list[ToolCall] = []
        self.content = ""
        self._started = False

    def feed(self, text: str) -> str:
        """Add the next accepted text; return what can be shown now."""
        if not self._started and text.strip():
            self._started = True
            # A member that wrote the whole call itself (no prefill in its prompt, e.g. an API model)
            # must not get the prefill twice.
            if self.spec.prefill and not text.lstrip().startswith(TOOL_CALL_OPEN):
                self.raw = self.spec.prefill + self.raw
        self.raw += text
        safe = max(self.sent, self._safe_end())
        out, self.sent = self.raw[self.sent : safe], safe
        return out

    def _safe_end(self) -> int:
        raw = self.raw
        if not self.spec.visible:
            return len(raw)
        tag = raw.find(TOOL_CALL_OPEN)
        if tag >= 0:
            return tag
        stripped = raw.lstrip()
        if not stripped or stripped[0] in "{[`":
            return 0
        for k in range(min(len(TOOL_CALL_OPEN) - 1, len(raw)), 0, -1):
            if TOOL_CALL_OPEN.startswith(raw[-k:]):
                return len(raw) - k
        return len(raw)

    def finish(self) -> str:
        """Parse the whole answer; return the text not shown yet (``content`` and ``calls`` are then set)."""
        content, self.calls = parse_tool_calls(self.raw, self.spec) if self.spec.visible else (self.raw, [])
        shown = self.raw[: self.sent]
        if not content.startswith(shown):  # parsing trimmed whitespace that was streamed already: keep it
            content = shown + content.strip()[len(shown.strip()) :]
        self.content = content
        return content[len(shown) :]
