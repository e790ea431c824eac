"""A minimal OpenAI-compatible server over one `Generator`, for benchmarks, the mixed example and backend tests.

Needs the server extra (FastAPI, uvicorn).

It serves ``POST /v1/chat/completions`` and ``POST /v1/completions`` (plain and streamed) from any generator:
a real local model (`HFGenerator`) or a deterministic `FunctionGenerator`. A trailing assistant message is
continued, the way vLLM does with ``continue_final_message``. Faults can be switched on to exercise API members:
fixed latency, an HTTP error for the first N requests (with ``Retry-After``), or a server that never answers.

Run standalone (a fixed text, e.g. as a latency stand-in or a process to kill mid-request)::

    python -m benchmarks.openai_stub --port 8011 --delay 1.0 --text "Paris is the capital of France."
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ensemblehub_core.generators.base import Generator, SegmentRequest
from ensemblehub_core.generators.function import FunctionGenerator
from ensemblehub_core.types import Candidate, Message
from ensemblehub_integrations.server import threaded

__all__ = ["Faults", "Served", "create_app", "fixed_text", "serve_in_thread"]


@dataclass(kw_only=True)
class Faults:
    """Misbehaviour of the server.

    Attributes:
        delay_s: Sleep before answering each request (simulated network + queue latency).
        fail_status: Answer the first ``fail_first`` requests with this HTTP status instead.
        fail_first: How many requests fail (``-1``: all of them).
        retry_after: ``Retry-After`` header sent with a failure.
    """

    delay_s: float = 0.0
    fail_status: int | None = None
    fail_first: int = -1
    retry_after: str | None = None


@dataclass(kw_only=True)
class Log:
    """What the server saw: arrival times (``time.monotonic``) and bodies of every request."""

    arrivals: list[float] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def fixed_text(text: str) -> FunctionGenerator:
    """A generator that always writes ``text`` (budgets and stop strings still apply)."""
    return FunctionGenerator("stub", lambda messages, prefix, request: text)


def _request(body: dict[str, Any]) -> SegmentRequest:
    stop = body.get("stop") or []
    return SegmentRequest(
        max_new_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 64),
        stop=[stop] if isinstance(stop, str) else list(stop),
        temperature=float(body.get("temperature") or 0.0),
        top_p=float(body.get("top_p") or 1.0),
        seed=body.get("seed"),
    )


def _finish(cand: Candidate) -> str:
    return "length" if cand.finish_reason == "length" else "stop"


def create_app(chat: Generator, text: Generator | None = None, *, faults: Faults | None = None) -> Any:
    """The FastAPI app; ``app.state.log`` records the requests.

    Args:
        chat: Answers ``/v1/chat/completions`` (a trailing assistant message is continued).
        text: Continues raw prompts on ``/v1/completions`` (default: ``chat`` with the prompt as a user turn).
        faults: Misbehaviour to simulate.
    """
    app = FastAPI()
    faults = faults or Faults()
    log = Log()
    app.state.log = log
    text_gen = text or chat

    async def gate(request: Request) -> tuple[dict[str, Any], JSONResponse | None]:
        body = await request.json()
        log.arrivals.append(time.monotonic())
        log.bodies.append(body)
        log.headers.append(dict(request.headers))
        n = len(log.arrivals)
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        if faults.fail_status is not None and (faults.fail_first < 0 or n <= faults.fail_first):
            headers = {"Retry-After": faults.retry_after} if faults.retry_after else None
            error = {"error": {"message": f"simulated failure {faults.fail_status}", "type": "server_error"}}
            return body, JSONResponse(error, status_code=faults.fail_status, headers=headers)
        return body, None

    def usage(cand: Candidate) -> dict[str, int]:
        return {"prompt_tokens": cand.prompt_tokens, "completion_tokens": cand.token_count,
                "total_tokens": cand.prompt_tokens + cand.token_count}

    def stream(cand: Candidate, chat_mode: bool, model: str) -> StreamingResponse:
        kind = "chat.completion.chunk" if chat_mode else "text_completion"

        def event(choice: dict[str, Any]) -> str:
            chunk = {"id": "stub", "object": kind, "model": model, "created": 0, "choices": [choice]}
            return f"data: {json.dumps(chunk)}\n\n"

        async def events() -> AsyncIterator[str]:
            words = cand.text.split(" ")
            for i, word in enumerate(words):
                piece = word if i == len(words) - 1 else word + " "
                body: dict[str, Any] = {"delta": {"role": "assistant", "content": piece}} if chat_mode else {
                    "text": piece}
                yield event({"index": 0, "finish_reason": None, **body})
            end: dict[str, Any] = {"delta": {}} if chat_mode else {"text": ""}
            yield event({"index": 0, "finish_reason": _finish(cand), **end})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body, failure = await gate(request)
        if failure is not None:
            return failure
        messages = [Message(role=m["role"], content=m.get("content") or "") for m in body["messages"]]
        prefix = ""
        if messages and messages[-1].role == "assistant":
            prefix = messages.pop().content
        cand = await chat.complete(messages, prefix, _request(body))
        model = body.get("model", "stub")
        if body.get("stream"):
            return stream(cand, True, model)
        return {
            "id": "stub", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": cand.text},
                         "finish_reason": _finish(cand)}],
            "usage": usage(cand),
        }

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body, failure = await gate(request)
        if failure is not None:
            return failure
        prompt = body.get("prompt") or ""
        prompt = prompt[0] if isinstance(prompt, list) else prompt
        cand = await text_gen.complete([Message(role="user", content=str(prompt))], "", _request(body))
        model = body.get("model", "stub")
        if body.get("stream"):
            return stream(cand, False, model)
        return {
            "id": "stub", "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": cand.text, "finish_reason": _finish(cand), "logprobs": None}],
            "usage": usage(cand),
        }

    return app


@dataclass(kw_only=True)
class Served:
    """A running server: ``api_base`` (with ``/v1``) and the app (its ``state.log``)."""

    api_base: str
    app: Any

    @property
    def log(self) -> Log:
        return self.app.state.log


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[Served]:
    """Run ``app`` with uvicorn on a free port of 127.0.0.1 (in a daemon thread) until the block ends."""
    with threaded.serve_in_thread(app, graceful_s=1) as running:
        yield Served(api_base=f"{running.url}/v1", app=app)


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds to sleep before each answer")
    ap.add_argument("--text", default="Paris is the capital of France.")
    args = ap.parse_args(argv)
    app = create_app(fixed_text(args.text), faults=Faults(delay_s=args.delay))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
