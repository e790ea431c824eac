"""Engine results → OpenAI response bodies and server-sent-event chunks (plain dicts, written as JSON)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ensemblehub_core.types import EnsembleResult, RoundTrace, TokenLogprob
from ensemblehub_integrations.common import finish_reason, trace_dict
from ensemblehub_integrations.server.protocol import Job

__all__ = ["Renderer", "sse"]

#: How a response-level strategy decided (its vote table, ranking, extracted answers), added to the trace.
_DECISIONS = ("votes", "ranking", "answers", "winner_answer")


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event carrying ``data`` (a JSON object, or a literal such as ``[DONE]``)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class Renderer:
    """Writes the responses of one job (one id and creation time for all its chunks)."""

    def __init__(self, job: Job, model: str) -> None:
        self.job = job
        self.model = model
        prefix = "chatcmpl" if job.kind == "chat" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion" if job.kind == "chat" else "text_completion"

    # -- whole responses ---------------------------------------------------------------------------------
    def response(
        self, results: Sequence[EnsembleResult], logprobs: Sequence[list[TokenLogprob]] | None = None
    ) -> dict[str, Any]:
        """The body of a non-streamed response; ``results[i]`` is choice ``i``, ``logprobs[i]`` its tokens."""
        choices = [self._choice(i, r) for i, r in enumerate(results)]
        for choice, tokens in zip(choices, logprobs or [], strict=False):
            choice["logprobs"] = self._logprobs(tokens)
        body: dict[str, Any] = {
            "id": self.id, "object": self.object, "created": self.created, "model": self.model,
            "choices": choices, "usage": self.usage(results), "system_fingerprint": None,
        }
        if self.job.trace:
            body["ensemble_trace"] = [self.trace(i, r) for i, r in enumerate(results)]
        return body

    def _choice(self, index: int, result: EnsembleResult) -> dict[str, Any]:
        if self.job.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": result.text}
            if result.tool_calls:
                message["tool_calls"] = [c.to_dict() for c in result.tool_calls]
                message["content"] = result.text or None
            return {"index": index, "message": message, "finish_reason": finish_reason(result), "logprobs": None}
        text = self.job.texts[index // self.job.n] + result.text if self.job.echo else result.text
        return {"index": index, "text": text, "finish_reason": result.finish_reason, "logprobs": None}

    def _logprobs(self, tokens: list[TokenLogprob]) -> dict[str, Any]:
        """OpenAI's logprobs object: ``content`` entries (chat), or the legacy parallel lists (completions)."""
        if self.job.kind == "chat":
            def entry(token: str, logprob: float | None) -> dict[str, Any]:
                return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

            return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(a, b) for a, b in t.top]}
                                for t in tokens], "refusal": None}
        offsets, at = [], 0
        for t in tokens:
            offsets.append(at)
            at += len(t.token)
        return {"tokens": [t.token for t in tokens], "token_logprobs": [t.logprob for t in tokens],
                # a prompt's first token has no score and no alternatives: null, as OpenAI sends it
                "top_logprobs": [None if t.logprob is None else dict(t.top) for t in tokens],
                "text_offset": offsets}

    def usage(self, results: Sequence[EnsembleResult]) -> dict[str, Any]:
        """Usage over all choices; a prompt answered ``n`` times counts once, as OpenAI counts it."""
        prompt = sum(results[i].usage.prompt_tokens for i in range(0, len(results), self.job.n))
        completion = sum(r.usage.completion_tokens for r in results)
        members: dict[str, int] = {}
        for r in results:
            for name, tokens in r.usage.member_tokens.items():
                members[name] = members.get(name, 0) + tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "member_tokens": members}

    def trace(self, index: int, result: EnsembleResult) -> dict[str, Any]:
        return {
            "index": index, **trace_dict(result, self.job.trace or "summary"),
            **{k: result.extra[k] for k in _DECISIONS if k in result.extra},
        }

    # -- stream chunks -----------------------------------------------------------------------------------
    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.job.kind == "chat" else "text_completion"
        chunk = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                 "system_fingerprint": None, "choices": choices, **extra}
        if self.job.include_usage and "usage" not in chunk:
            chunk["usage"] = None  # as OpenAI: usage is null on every chunk but the last
        return chunk

    def _delta(
        self, index: int, text: str | None, finish: str | None = None, role: bool = False
    ) -> dict[str, Any]:
        if self.job.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}

    def opening(self, index: int) -> dict[str, Any] | None:
        """The first chunk of a choice: the assistant role (chat) or the echoed prompt (completions)."""
        if self.job.kind == "chat":
            return self._chunk([self._delta(index, "", role=True)])
        if self.job.echo:
            return self._chunk([self._delta(index, self.job.texts[index // self.job.n])])
        return None

    def segment(self, index: int, text: str, round_: RoundTrace | None) -> dict[str, Any]:
        """A chunk with one accepted segment (and that round's trace when asked for)."""
        extra: dict[str, Any] = {}
        if self.job.trace and round_ is not None:
            extra["ensemble_trace"] = {"index": index, "round": round_.to_dict() if self.job.trace == "full"
                                       else round_.summary()}
        return self._chunk([self._delta(index, text)], **extra)

    def finish(self, index: int, result: EnsembleResult) -> list[dict[str, Any]]:
        """The last chunks of a choice: its tool calls if any, then its finish reason with no new text."""
        extra: dict[str, Any] = {}
        if self.job.trace:
            info = self.trace(index, result)
            info.pop("rounds")  # already sent round by round
            extra["ensemble_trace"] = info
        chunks = []
        if self.job.kind == "chat" and result.tool_calls:
            # Calls are known once the answer is complete (the engine holds their text back), so each comes
            # whole in one delta rather than argument piece by argument piece.
            calls = [{"index": k, **c.to_dict()} for k, c in enumerate(result.tool_calls)]
            delta = self._delta(index, None)
            delta["delta"]["tool_calls"] = calls
            chunks.append(self._chunk([delta]))
        empty = None if self.job.kind == "chat" else ""
        chunks.append(self._chunk([self._delta(index, empty, finish_reason(result))], **extra))
        return chunks

    def usage_chunk(self, results: Sequence[EnsembleResult]) -> dict[str, Any]:
        """The chunk after the last choice when ``stream_options.include_usage`` is set: no choices, usage."""
        return self._chunk([], usage=self.usage(results))
