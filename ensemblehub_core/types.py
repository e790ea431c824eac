"""Plain values passed between the engine's parts (internal: dataclasses, not pydantic)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal

__all__ = [
    "Candidate",
    "EnsembleResult",
    "FinishReason",
    "GenerationParams",
    "Message",
    "RoundTrace",
    "TokenLogprob",
    "ToolCall",
    "Usage",
]

#: Why a member stopped writing a candidate.
#: ``eos``: the member emitted its end-of-sequence token; ``stop``: a stop string was reached (not included);
#: ``delimiter``: a step delimiter ended the segment (included); ``length``: the token budget ran out;
#: ``error``: the member failed.
FinishReason = Literal["eos", "stop", "delimiter", "length", "error"]


@dataclass(kw_only=True)
class Message:
    """One chat message.

    Attributes:
        role: ``system``, ``user``, ``assistant`` or ``tool``.
        content: The text (empty for an assistant turn that only calls tools).
        tool_calls: An assistant turn's tool calls, each ``{"id", "type": "function", "function": {"name",
            "arguments"}}`` with ``arguments`` as a dict (what chat templates render with ``tojson``).
        tool_call_id: For a ``tool`` message: the call it answers.
        name: The tool's name (``tool`` messages) or the speaker's name.
    """

    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The message as chat templates expect it (optional fields only when set)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [dict(c) for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(kw_only=True)
class GenerationParams:
    """Per-request generation settings shared by every member.

    Attributes:
        max_tokens: Budget for the whole answer, counted in the winning members' tokens.
        temperature: 0 means greedy decoding.
        top_p: Nucleus sampling mass (only used when temperature > 0).
        stop: Stop strings; the answer ends before the first one.
        seed: Seed for sampling and for random choices of strategies.
        tools: Tools the answer may call, in the OpenAI format (``{"type": "function", "function": {...}}``).
        tool_choice: ``auto``, ``none``, ``required`` or a tool's name (see `ensemblehub_core.tools`).
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | None = None

    def merged(self, **overrides: Any) -> GenerationParams:
        """Return a copy with the given non-None fields replaced."""
        values = {k: getattr(self, k) for k in GENERATION_KEYS}
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["stop"] = list(values["stop"])
        return GenerationParams(**values)


#: The generation parameters a request may set, by the engine's names: the one list every face derives its own
#: from (`Ensemble.resolve_params` checks them).
GENERATION_KEYS: tuple[str, ...] = tuple(f.name for f in fields(GenerationParams))


@dataclass(kw_only=True)
class Candidate:
    """What one member wrote in one round.

    Attributes:
        token_ids: The member's own token ids for this candidate, the end token it emitted included when it
            ended with EOS (local members; ``None`` where the backend does not say).
        token_logprobs: Each of ``token_ids``' log-probability under the member's own, untempered next-token
            distribution, as computed while decoding (``None`` where the backend does not give them).
    """

    member: str
    text: str
    token_count: int = 0
    prompt_tokens: int = 0
    finish_reason: FinishReason = "length"
    elapsed_s: float = 0.0
    error: str | None = None
    token_ids: list[int] | None = None
    token_logprobs: list[float] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ended(self) -> bool:
        """The member ended the answer itself (EOS or a stop string), rather than running out of budget."""
        return self.finish_reason in ("eos", "stop")

    @property
    def answer_finish(self) -> Literal["stop", "length"]:
        """OpenAI's finish reason of an answer that ends with this candidate."""
        return "stop" if self.ended else "length"


@dataclass(kw_only=True)
class RoundTrace:
    """The record of one round: who wrote what, how each was scored, what was kept."""

    index: int
    candidates: list[Candidate]
    scores: list[float | None] = field(default_factory=list)
    scorer_scores: dict[str, list[float | None]] = field(default_factory=dict)
    winner: str | None = None
    winner_index: int | None = None
    accepted_text: str = ""
    accepted_tokens: int = 0
    generate_s: float = 0.0
    score_s: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)
    note: str = ""

    def summary(self) -> dict[str, Any]:
        """A compact JSON-able view (winner, scores per member, timing)."""
        return {
            "round": self.index,
            "winner": self.winner,
            "scores": {
                c.member: (None if s is None else round(s, 4))
                for c, s in zip(self.candidates, self.scores or [None] * len(self.candidates), strict=False)
            },
            "accepted_tokens": self.accepted_tokens,
            "generate_s": round(self.generate_s, 3),
            "score_s": round(self.score_s, 3),
            **({"errors": self.errors} if self.errors else {}),
            **({"note": self.note} if self.note else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        """The full record, JSON-able."""
        return {
            **self.summary(),
            **({"winner_index": self.winner_index} if self.winner_index is not None else {}),
            "accepted_text": self.accepted_text,
            "candidates": [
                {
                    "member": c.member,
                    "text": c.text,
                    "tokens": c.token_count,
                    "finish_reason": c.finish_reason,
                    "elapsed_s": round(c.elapsed_s, 3),
                    **({"error": c.error} if c.error else {}),
                }
                for c in self.candidates
            ],
            "scorer_scores": self.scorer_scores,
        }


@dataclass(kw_only=True, frozen=True)
class TokenLogprob:
    """One answer token with its log-probability under the model, and the most likely alternatives there.

    Attributes:
        token: The token's text.
        logprob: Its natural-log probability (temperature 1, no truncation); None for a text's first token,
            which has nothing before it to be scored from.
        top: The ``k`` most likely tokens at that position, most likely first, as (text, logprob).
    """

    token: str
    logprob: float | None
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass(kw_only=True)
class ToolCall:
    """A tool call read from an answer (see `ensemblehub_core.tools.parse_tool_calls`)."""

    id: str
    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI wire shape (``arguments`` as a JSON string)."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }

    def to_message_dict(self) -> dict[str, Any]:
        """The shape `Message.tool_calls` holds (``arguments`` as a dict, as chat templates expect)."""
        fn = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": fn}


@dataclass(kw_only=True)
class Usage:
    """Token accounting of one ensemble call.

    ``prompt_tokens`` is the prompt length in the first member's tokenizer; ``completion_tokens`` counts the
    accepted text in the tokens of the members that wrote it; ``member_tokens`` is every token each member
    generated, kept or not (the real cost of the ensemble).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    member_tokens: dict[str, int] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "member_tokens": dict(self.member_tokens),
        }


@dataclass(kw_only=True)
class EnsembleResult:
    """The answer of an ensemble with its accounting and per-round trace.

    ``finish_reason`` follows the OpenAI convention: ``stop`` (EOS or a stop string) or ``length``. When the
    request offered tools, the calls the answer made are in ``tool_calls`` and ``text`` is the answer without
    the call markup (faces report ``tool_calls`` as the finish reason when there are any).
    """

    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage
    trace: list[RoundTrace]
    ensemble: str = ""
    strategy: str = ""
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    tool_calls: list[ToolCall] = field(default_factory=list)

    def to_dict(self, full_trace: bool = False) -> dict[str, Any]:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "usage": self.usage.to_dict(),
            "ensemble": self.ensemble,
            "strategy": self.strategy,
            "elapsed_s": round(self.elapsed_s, 3),
            "trace": [r.to_dict() if full_trace else r.summary() for r in self.trace],
            **({"extra": self.extra} if self.extra else {}),
            **({"tool_calls": [c.to_dict() for c in self.tool_calls]} if self.tool_calls else {}),
        }
