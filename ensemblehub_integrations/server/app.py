"""The FastAPI app: OpenAI-compatible routes over the configured ensembles of one `Hub`.

```python
from ensemblehub_integrations.server import create_app
app = create_app("my-ensembles.yaml")   # then uvicorn; or `ensemblehub serve --config my-ensembles.yaml`
```
Only configured ensembles are served: a request names one by its ``model`` field and cannot bring its own
models or settings beyond the OpenAI generation parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles

from ensemblehub_core._text import redact_userinfo
from ensemblehub_core.config import HubConfig
from ensemblehub_core.engine import EnsembleChunk
from ensemblehub_core.exceptions import EnsembleHubError
from ensemblehub_core.generators.base import Generator
from ensemblehub_core.hub import Hub
from ensemblehub_core.types import Candidate, EnsembleResult, Message
from ensemblehub_integrations.server.errors import APIError, from_engine, install_handlers, load_failed, unexpected
from ensemblehub_integrations.server.limits import BodyLimit
from ensemblehub_integrations.server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    Job,
    ModelCard,
    ModelList,
    StatusResponse,
    chat_job,
    completion_job,
)
from ensemblehub_integrations.server.render import Renderer, sse
from ensemblehub_integrations.server.scheduler import (
    Admission,
    Lease,
    Runner,
    make_runner,
)
from ensemblehub_integrations.server.settings import CONFIG_ENV, ServerSettings

__all__ = ["ServerState", "app_from_env", "create_app"]

log = logging.getLogger("ensemblehub.server")
#: The browser page served at ``/ui`` (plain HTML, CSS and JavaScript; no build step).
UI_DIR = Path(__file__).parent / "ui"

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [(400, "Invalid request"), (401, "Missing or wrong API key"), (404, "Unknown model"),
                       (429, "Queue full; retry later"), (500, "Generation failed"), (503, "Not ready")]
}
_STREAM_DOC: dict[str, Any] = {
    "text/event-stream": {"schema": {"type": "string"}, "description": "With stream: true, OpenAI's chunks"}
}


class _End:
    """Marks the end of one merged stream."""


_END = _End()


class _Merged:
    """Several runs pumped concurrently into one stream of ``(choice index, chunk)``.

    The runs start at once; `peek` lets the caller see an error that comes before any output, `events`
    yields the chunks, and `aclose` cancels what still runs (the client went away, or another choice failed).
    """

    def __init__(self, streams: Sequence[AsyncIterator[EnsembleChunk]]) -> None:
        self._queue: asyncio.Queue[tuple[int, EnsembleChunk | Exception | _End]] = asyncio.Queue()
        self._head: list[tuple[int, EnsembleChunk | Exception | _End]] = []
        self._left = len(streams)
        self._tasks = [asyncio.create_task(self._pump(i, s)) for i, s in enumerate(streams)]
        self._ended = False

    def abort(self, err: Exception) -> None:
        """End the runs now; the consumer gets ``err`` next (a timeout, the server shutting down)."""
        if self._ended:
            return
        self._ended = True
        self._queue.put_nowait((-1, err))
        for task in self._tasks:
            task.cancel()

    async def _pump(self, index: int, stream: AsyncIterator[EnsembleChunk]) -> None:
        try:
            async for chunk in stream:
                self._queue.put_nowait((index, chunk))
        except Exception as exc:  # handed to the consumer, which maps it to a response
            self._queue.put_nowait((index, exc))
        finally:
            self._queue.put_nowait((index, _END))

    async def peek(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the first event; raise it if it is an error."""
        if self._head or timeout <= 0:
            return
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return
        if isinstance(item[1], Exception):
            raise item[1]
        self._head.append(item)

    async def events(self) -> AsyncIterator[tuple[int, EnsembleChunk]]:
        """Every run's chunks as they come; the first error is raised."""
        while self._left:
            index, item = self._head.pop() if self._head else await self._queue.get()
            if isinstance(item, _End):
                self._left -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item

    async def aclose(self) -> None:
        self._ended = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class ServerState:
    """What the routes share: the hub, one runner per built ensemble, admission, and the preload progress."""

    def __init__(self, hub: Hub, settings: ServerSettings) -> None:
        self.hub = hub
        self.settings = settings
        self.admission = Admission(settings.max_pending)
        self.runners: dict[str, Runner] = {}
        self.loading: dict[str, str] = dict.fromkeys(settings.preload, "pending")
        self.errors: dict[str, str] = {}
        self.created = int(time.time())
        #: Set by a SIGTERM (see `lifecycle.ReplicaServer`): new requests get a 503, /health says so.
        self.draining = False
        self.inflight: set[_Merged] = set()
        self._preload: asyncio.Task[None] | None = None
        self._building: dict[str, asyncio.Future[Runner]] = {}

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Local members decode in worker threads; the default pool (cores + 4) is too small to also keep
        # model building and many waiting requests from queueing behind each other.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=32, thread_name_prefix="ensemblehub"))
        self._preload = asyncio.create_task(self._load_all())

    async def stop(self) -> None:
        if self._preload is not None:
            self._preload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._preload
        for runner in self.runners.values():
            await runner.close()

    async def _load_all(self) -> None:
        for name in self.settings.preload:
            self.loading[name] = "loading"
            try:
                await self.runner(name)
            except APIError as err:
                cause = err.__cause__
                self.loading[name] = "error"
                self.errors[name] = redact_userinfo(f"{type(cause).__name__}: {cause}" if cause else err.message)
            else:
                self.loading[name] = "ready"
                log.info("ensemble '%s' is ready", name)

    def status(self, *, details: bool = False) -> tuple[int, dict[str, Any]]:
        """Readiness. Load errors can name files and hosts: their text only goes to a caller with a valid key
        (``details``); others see that an ensemble failed and where to look."""
        if self.draining:
            state = "shutting_down"
        elif self.errors:
            state = "error"
        elif all(v == "ready" for v in self.loading.values()):
            state = "ready"
        else:
            state = "loading"
        errors = dict(self.errors) if details else {
            name: "failed to load; the server log has the details" for name in self.errors}
        body = {"status": state, "ensembles": dict(self.loading), "errors": errors}
        return (200 if state == "ready" else 503), body

    def end_inflight(self) -> None:
        """End every request still running (the grace period of a shutdown is over)."""
        for merged in list(self.inflight):
            merged.abort(APIError(503, "the server is shutting down and its grace period is over; retry the "
                                  "request (on another replica)", code="shutting_down",
                                  headers={"Retry-After": "1"}))

    # -- ensembles ---------------------------------------------------------------------------------------
    async def runner(self, name: str) -> Runner:
        """The runner of a configured ensemble, building the ensemble (in a worker thread) on first use.

        Requests that arrive while an ensemble is being built wait for that one build (a cancelled request
        does not cancel it); a failed build is tried again by the next request.
        """
        runner = self.runners.get(name)
        if runner is not None:
            return runner
        task = self._building.get(name)
        if task is None:
            task = asyncio.ensure_future(self._build(name))
            self._building[name] = task

            def done(t: asyncio.Future[Runner]) -> None:
                self._building.pop(name, None)
                if not t.cancelled():
                    t.exception()  # marks a failure as seen even if every waiter has gone

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _build(self, name: str) -> Runner:
        try:
            ensemble = await asyncio.to_thread(self.hub.ensemble, name)
        except EnsembleHubError as exc:
            raise from_engine(exc) from exc
        except Exception as exc:
            raise load_failed(f"{type(exc).__name__}: {exc}", name) from exc
        s = self.settings
        runner = make_runner(ensemble, max_concurrency=s.max_concurrency, max_batch=s.max_batch_size,
                             window_s=s.batch_window_s)
        return self.runners.setdefault(name, runner)

    def check_model(self, model: str | None) -> str:
        name = model or self.hub.default_name
        if name not in self.hub.config.ensembles:
            raise APIError(404, f"model '{name}' is not served here; configured ensembles: "
                           f"{', '.join(self.hub.names())}", param="model", code="model_not_found")
        return name

    # -- requests ----------------------------------------------------------------------------------------
    async def respond(self, job: Job, request: Request) -> Response:
        if self.draining:
            raise APIError(503, "the server is shutting down; retry the request (on another replica)",
                           code="shutting_down", headers={"Retry-After": "1"})
        name = self.check_model(job.model)
        cap = self.settings.max_tokens
        if cap and job.params.get("max_tokens", 0) > cap:
            raise APIError(400, f"'max_tokens' is {job.params['max_tokens']}; this server allows at most {cap}",
                           param="max_tokens", code="invalid_value")
        if job.choices > self.settings.max_choices:
            raise APIError(400, f"this request asks for {job.choices} answers (n × prompts); at most "
                           f"{self.settings.max_choices} are allowed", param="n", code="too_many_choices")
        # Admitted first: a request waiting for its ensemble to be built holds a place in the queue too.
        lease = self.admission.admit()
        try:
            runner = await self.runner(name)
            await self._check_prompt_budget(job, runner)
            scorer = _logprobs_member(job, runner) if job.logprobs_requested else None
            if scorer is not None and job.echo:
                timeout = self.settings.request_timeout_s or None
                try:
                    return JSONResponse(await asyncio.wait_for(self._score_prompts(job, scorer, runner), timeout))
                except TimeoutError:
                    # The forward pass already running finishes in its thread; the client is answered now.
                    raise APIError(504, f"scoring the prompt took longer than the server's limit of {timeout:g} s; "
                                   "send shorter prompts, or raise server.request_timeout_s", code="timeout") from None
                finally:
                    lease.release()
            merged = self._track(_Merged([runner.stream(p, params, live=job.stream)
                                          for p, params in self._runs(job, runner)]))
        except BaseException:
            lease.release()
            raise
        renderer = Renderer(job, name)
        if not job.stream:
            try:
                results = await self._collect(merged, job, request)
            finally:
                lease.release()
            if results is None:  # the client went away; nobody reads this
                return Response(status_code=499)
            logprobs = None
            if scorer is not None:
                # choice i answers prompt i // n
                logprobs = [await asyncio.to_thread(scorer.answer_logprobs, job.prompts[i // job.n], r.text,
                                                    job.top_logprobs) for i, r in enumerate(results)]
            return JSONResponse(renderer.response(results, logprobs))
        try:
            await merged.peek(self.settings.prime_s)
        except BaseException as exc:
            await merged.aclose()
            lease.release()
            raise self._mapped(exc, job) from exc
        body = self._events(merged, job, renderer, lease)
        weakref.finalize(body, lease.release)  # a stream that never started still gives its place back
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _check_prompt_budget(self, job: Job, runner: Runner) -> None:
        """Refuse a prompt over ``server.max_prompt_tokens``, counted with each local member's tokenizer (a
        member behind HTTP is bounded by its own server), before any of it is computed."""
        limit = self.settings.max_prompt_tokens
        if not limit:
            return

        def too_long(what: str) -> APIError:
            return APIError(400, f"the prompt is {what}, longer than this server's limit of {limit} tokens per "
                            "prompt; shorten it", param=job.prompt_field, code="prompt_too_long")

        for ids in job.prompt_ids:
            if len(ids) > limit:
                raise too_long(f"{len(ids)} tokens")
        counters = [m for m in runner.ensemble.members.values() if getattr(m, "tokenizer", None) is not None
                    and callable(getattr(m, "encode_prompt", None))]
        for prompt in job.prompts:
            for member in counters:
                try:
                    n = len(await asyncio.to_thread(member.encode_prompt, prompt))  # type: ignore[attr-defined]
                except EnsembleHubError as exc:
                    raise from_engine(exc, prompt_field=job.prompt_field) from exc
                if n > limit:
                    raise too_long(f"{n} tokens for member '{member.name}'")

    def _track(self, merged: _Merged) -> _Merged:
        """Count a request in flight until it ends, and end it at the request timeout."""
        self.inflight.add(merged)
        timeout = self.settings.request_timeout_s
        timer = None
        if timeout:
            timer = asyncio.get_running_loop().call_later(timeout, merged.abort, APIError(
                504, f"the request ran longer than the server's limit of {timeout:g} s and was stopped; ask for "
                "fewer tokens, or raise server.request_timeout_s", code="timeout"))
        closing = merged.aclose

        async def aclose() -> None:
            self.inflight.discard(merged)
            if timer is not None:
                timer.cancel()
            await closing()

        merged.aclose = aclose  # type: ignore[method-assign]
        return merged

    @staticmethod
    async def _score_prompts(job: Job, member: Generator, runner: Runner) -> dict[str, Any]:
        """``echo`` with ``logprobs``: each raw prompt's tokens scored, plus one greedy token, in one pass."""
        results, logprobs = [], []
        sources: list[str | list[int]] = [*job.texts] if job.texts else [*job.prompt_ids]
        for source in sources:
            started = time.perf_counter()
            try:
                tokens = await asyncio.to_thread(member.score_prompt, source, job.top_logprobs, extend=True)
            except EnsembleHubError as exc:
                raise from_engine(exc, prompt_field="prompt") from exc
            *prompt, nxt = tokens
            if isinstance(source, list):
                job.texts.append("".join(t.token for t in prompt))  # the echo of token ids: their text
            cand = Candidate(member=member.name, text=nxt.token, token_count=1, prompt_tokens=len(prompt))
            result = runner.ensemble.result_of(cand, time.perf_counter() - started, note="prompt scored")
            results.extend([result] * job.n)
            logprobs.extend([tokens] * job.n)
        return Renderer(job, runner.ensemble.name).response(results, logprobs)

    def _runs(self, job: Job, runner: Runner) -> list[tuple[list[Message], dict[str, Any]]]:
        """Each choice's prompt and parameters; sampled choices of one prompt get different seeds."""
        defaults = runner.ensemble.defaults
        sampled = job.params.get("temperature", defaults.temperature) > 0
        seed = job.params.get("seed", defaults.seed)
        runs = []
        for prompt in job.prompts:
            for j in range(job.n):
                params = dict(job.params)
                if sampled and seed is not None and j:
                    params["seed"] = (seed + 1000 * j) % 2**62
                runs.append((prompt, params))
        return runs

    @staticmethod
    def _mapped(exc: BaseException, job: Job) -> BaseException:
        if isinstance(exc, APIError) or not isinstance(exc, Exception):
            return exc
        if isinstance(exc, EnsembleHubError):
            return from_engine(exc, prompt_field=job.prompt_field)
        return unexpected(exc)

    async def _collect(self, merged: _Merged, job: Job, request: Request) -> list[EnsembleResult] | None:
        """All choices' results, or None when the client disconnected first (the runs are then cancelled)."""

        async def gather() -> list[EnsembleResult]:
            results: list[EnsembleResult | None] = [None] * job.choices
            async for index, chunk in merged.events():
                if chunk.result is not None:
                    results[index] = chunk.result
            return [r for r in results if r is not None]

        work = asyncio.create_task(gather())
        watch = asyncio.create_task(_disconnected(request))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                log.info("client disconnected; generation cancelled")
                return None
            try:
                return work.result()
            except Exception as exc:
                raise self._mapped(exc, job) from exc
        finally:
            for task in (work, watch):
                task.cancel()
            await asyncio.gather(work, watch, return_exceptions=True)
            await merged.aclose()

    async def _events(
        self, merged: _Merged, job: Job, renderer: Renderer, lease: Lease
    ) -> AsyncIterator[bytes]:
        """The SSE body: role/echo openings, segments as decided, finish chunks, usage, then ``[DONE]``."""
        results: list[EnsembleResult | None] = [None] * job.choices
        try:
            for i in range(job.choices):
                opening = renderer.opening(i)
                if opening is not None:
                    yield sse(opening)
            async for index, chunk in merged.events():
                if chunk.result is not None:
                    results[index] = chunk.result
                    for event in renderer.finish(index, chunk.result):
                        yield sse(event)
                elif chunk.text or job.trace:
                    yield sse(renderer.segment(index, chunk.text, chunk.round))
            if job.include_usage:
                yield sse(renderer.usage_chunk([r for r in results if r is not None]))
        except Exception as exc:  # mid-stream: the status line is sent, so the error becomes an event
            err = self._mapped(exc, job)
            yield sse(err.body() if isinstance(err, APIError) else unexpected(exc).body())
        finally:
            # Runs on completion, on error, and when the client disconnects (Starlette cancels this body).
            await merged.aclose()
            lease.release()
        yield sse("[DONE]")


def _logprobs_member(job: Job, runner: Runner) -> Generator:
    """The member whose distribution an answer's logprobs come from, or a 400 saying why there is none.

    Only an ensemble that answers with one member alone has one token distribution per answer; that
    member scores the finished answer token by token (one forward pass), as the model would have seen it.
    """
    ens = runner.ensemble
    member = ens.lone_member

    def refuse(why: str, param: str = "logprobs") -> APIError:
        return APIError(400, f"ensemble '{ens.name}' cannot return logprobs: {why}", param=param,
                        code="logprobs_unsupported")

    if member is None:
        raise refuse(f"its strategy '{ens.strategy.name}' assembles the answer from several models' tokens, "
                     "so no single token distribution exists; leave 'logprobs' out")
    if not member.supports_answer_logprobs:
        raise refuse(f"its member '{member.name}' ({type(member).__name__}) cannot score tokens; leave 'logprobs' "
                     "out")
    if job.stream:
        raise refuse("logprobs are given with whole answers only; ask without 'stream'", param="stream")
    if job.echo and job.params.get("max_tokens") != 1:
        raise refuse("'echo' with 'logprobs' scores the prompt as raw text and continues it by one greedy "
                     "token; send max_tokens 1", param="max_tokens")
    if job.params.get("tools"):
        raise refuse("answers that may call tools are not scored; ask without 'tools'", param="tools")
    if job.params.get("continue_final_message"):
        raise refuse("continued messages are not scored; ask without 'continue_final_message'",
                     param="continue_final_message")
    return member


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (the request body has already been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _hub(config: Hub | HubConfig | str | Path | None) -> Hub:
    return config if isinstance(config, Hub) else Hub(config)


def create_app(
    config: Hub | HubConfig | str | Path | None = None,
    *,
    api_key: str | None = None,
    settings: ServerSettings | None = None,
    ui: bool | None = None,
) -> FastAPI:
    """Build the OpenAI-compatible app over a config's ensembles.

    Args:
        config: A `Hub`, a `HubConfig`, a YAML path, or None for the packaged default config.
        api_key: A bearer key to require, in addition to the config's ``server.api_keys`` and the
            ``ENSEMBLEHUB_API_KEY`` environment variable.
        settings: Explicit settings (default: from the config's ``server:`` section).
        ui: Serve the browser page at ``/ui`` (default: the settings' ``ui``, on unless the config turns it off).
    """
    hub = _hub(config)
    state = ServerState(hub, settings or ServerSettings.from_config(hub.config, api_key=api_key))
    if ui is not None:
        state.settings.ui = ui

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="Ensemble-Hub", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API over configured LLM ensembles.")
    app.state.server = state
    install_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=state.settings.max_body_bytes, timeout_s=state.settings.body_timeout_s)
    bearer = HTTPBearer(auto_error=False, description="Required when the server is configured with API keys.")
    keys = [k.encode() for k in state.settings.api_keys]

    def valid_key(creds: HTTPAuthorizationCredentials | None) -> bool:
        """A configured key was sent (compared with every key in constant time, so timing tells nothing)."""
        given = creds.credentials.encode() if creds is not None else b""
        return bool(keys) and any([hmac.compare_digest(given, k) for k in keys])  # a list: no short-circuit

    async def authorize(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if not keys:
            return
        if not valid_key(creds):
            raise APIError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorize)]

    @app.get("/health", tags=["status"])
    async def health() -> JSONResponse:
        """Health: ``ok`` (200) while the process can serve; ``error`` (503) when a preloaded ensemble failed to
        load, ``shutting_down`` (503) while it drains."""
        if state.draining:
            return JSONResponse({"status": "shutting_down"}, status_code=503, headers={"Retry-After": "1"})
        if state.errors:
            return JSONResponse({"status": "error"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/status", tags=["status"], response_model=StatusResponse,
             responses={503: {"model": StatusResponse, "description": "Loading, failed, or shutting down"}})
    async def status(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> JSONResponse:  # noqa: B008
        """Readiness: ``ready`` once the preloaded ensembles are built, else ``loading``/``error``/``shutting_down``
        (503). Why a load failed is shown to callers with a valid API key only."""
        code, body = state.status(details=valid_key(creds))
        return JSONResponse(body, status_code=code)

    @app.get("/v1/models", tags=["models"], response_model=ModelList, dependencies=guarded,
             responses={401: _ERRORS[401]})
    async def list_models() -> dict[str, Any]:
        """The configured ensembles."""
        return {"object": "list", "data": [_card(e, state.created) for e in hub.describe()]}

    @app.get("/v1/models/{model_id}", tags=["models"], response_model=ModelCard, dependencies=guarded,
             responses={401: _ERRORS[401], 404: _ERRORS[404]})
    async def get_model(model_id: str) -> dict[str, Any]:
        """One configured ensemble."""
        name = state.check_model(model_id)
        return next(_card(e, state.created) for e in hub.describe() if e["name"] == name)

    @app.post("/v1/chat/completions", tags=["completions"], response_model=ChatCompletionResponse,
              dependencies=guarded, responses={**_ERRORS, 200: {"content": _STREAM_DOC}})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """Chat completion by an ensemble (``stream: true`` for server-sent events)."""
        _log_ignored(body.model_extra)
        return await state.respond(chat_job(body), request)

    @app.post("/v1/completions", tags=["completions"], response_model=CompletionResponse,
              dependencies=guarded, responses={**_ERRORS, 200: {"content": _STREAM_DOC}})
    async def completions(body: CompletionRequest, request: Request) -> Response:
        """Text completion by an ensemble; the prompt is sent to the members as one user message."""
        _log_ignored(body.model_extra)
        return await state.respond(completion_job(body), request)

    if state.settings.ui:
        # Static files only: the page calls the API above with the key its user types, so it needs no key itself.
        app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
    return app


def _card(entry: dict[str, Any], created: int) -> dict[str, Any]:
    return {"id": entry["name"], "object": "model", "created": created, "owned_by": "ensemblehub",
            "description": entry["description"], "strategy": entry["strategy"]["name"],
            "members": [m["name"] for m in entry["members"]]}


def _log_ignored(extra: dict[str, Any] | None) -> None:
    if extra:
        log.debug("ignoring unknown request fields: %s", ", ".join(sorted(extra)))


def app_from_env() -> FastAPI:
    """The app for ``uvicorn --factory``: config from ``ENSEMBLEHUB_CONFIG`` (default: the packaged one)."""
    return create_app(os.environ.get(CONFIG_ENV) or None)
