"""Every error the server sends, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Engine errors are mapped to HTTP here, once (`from_engine`); the handlers installed by `install_handlers` turn
validation errors, unknown routes and anything unexpected into the same shape, so no client ever sees a
traceback. Unexpected errors are logged with their traceback on the server side.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ensemblehub_core._text import redact_userinfo
from ensemblehub_core.exceptions import EnsembleHubError, InputError, UnknownEnsembleError
from ensemblehub_integrations.common import error_status

__all__ = ["APIError", "error_body", "from_engine", "install_handlers", "load_failed", "unexpected"]

log = logging.getLogger("ensemblehub.server")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          503: "service_unavailable", 504: "timeout"}
#: Every error carries a code; these are the defaults where a more precise one is not given.
_CODES = {400: "invalid_value", 401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed",
          408: "request_timeout", 413: "request_too_large", 429: "queue_full", 500: "internal_error",
          503: "unavailable", 504: "timeout"}


class APIError(Exception):
    """An error response: HTTP status plus OpenAI's error fields.

    Args:
        status: HTTP status code.
        message: What went wrong and what to do about it.
        type: OpenAI's error type (default: derived from the status).
        param: The request field at fault, if any.
        code: A short machine-readable code (default: one derived from the status, never null).
        headers: Extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message = redact_userinfo(message)  # a member's URL may carry credentials: never sent to a client
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code or _CODES.get(status, "server_error" if status >= 500 else "invalid_request")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_engine(exc: EnsembleHubError, *, prompt_field: str = "messages") -> APIError:
    """Map an engine error to the response a client should get: the status and code of `common.error_status`
    (shared with the LiteLLM provider), the field at fault, and no internals in the message."""
    msg = str(exc)
    status = error_status(exc)
    if isinstance(exc, InputError):
        code = "context_length_exceeded" if exc.code is None and "context" in msg else status.code
        return APIError(status.status, msg, param=exc.param or prompt_field, code=code)  # default: the prompt
    if isinstance(exc, UnknownEnsembleError):
        return APIError(status.status, msg, param="model", code=status.code)
    if status.code == "model_load_failed":
        return load_failed(msg)
    if status.code == "generation_failed":
        return APIError(status.status, f"generation failed: {msg}", code=status.code)
    return APIError(status.status, msg, code=status.code)


def load_failed(detail: str, name: str | None = None) -> APIError:
    """An ensemble that could not be built: a 503 (another replica may serve it) without the detail, which can
    hold file paths; the detail goes to the server log."""
    log.error("ensemble %scould not be built: %s", f"'{name}' " if name else "", redact_userinfo(detail))
    which = f"ensemble '{name}'" if name else "the ensemble"
    return APIError(503, f"{which} could not be built (its models failed to load); the server log has the details",
                    code="model_load_failed")


def unexpected(exc: BaseException, *, log_it: bool = True) -> APIError:
    """An error nobody planned for: logged with its traceback here, summarised for the client."""
    if log_it:
        log.error("unexpected error while serving a request", exc_info=exc)
    return APIError(500, f"internal error ({type(exc).__name__}); the server log has the details",
                    code="internal_error")


def _validation_error(errors: list[Any]) -> APIError:
    """The first problem of a pydantic validation error, naming the field (``messages.0.content``)."""
    if not errors:
        return APIError(400, "invalid request body")
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    # Union members add their type names to the path (``prompt.str``); drop them to keep the field readable.
    loc = [p for p in loc if p not in {"str", "int", "list[str]", "list[int]", "list[list[int]]", "bool",
                                       "list[ContentPart]", "dict[str,any]", "function-after"}]
    if err.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {err.get('msg', '')}", code="invalid_json")
    param = ".".join(loc) or None
    if param is None and err.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        return APIError(400, "the request body must be a JSON object (Content-Type: application/json)",
                        code="invalid_body")
    where = f"'{param}'" if param else "the request body"
    if err.get("type") == "missing":
        return APIError(400, f"{where} is required", param=param, code="missing")
    return APIError(400, f"{where}: {err.get('msg', 'invalid value')}", param=param, code="invalid_value")


def _error_json_class() -> Any:
    from fastapi.responses import JSONResponse

    class ErrorJSON(JSONResponse):
        """ASCII JSON: an error that quotes a client's malformed text (a lone surrogate) still encodes."""

        def render(self, content: Any) -> bytes:
            return json.dumps(content, separators=(",", ":")).encode("ascii")

    return ErrorJSON


def install_handlers(app: Any) -> None:
    """Make every error response of ``app`` (a FastAPI app) take OpenAI's shape."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    ErrorJSON = _error_json_class()

    def respond(err: APIError) -> JSONResponse:
        return ErrorJSON(err.body(), status_code=err.status, headers=err.headers)

    async def api_error(_: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return respond(exc)

    async def validation_error(_: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return respond(_validation_error(list(exc.errors())))

    async def http_error(_: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return respond(APIError(404, "no such endpoint; see /docs for the API", code="not_found"))
        return respond(APIError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})))

    async def engine_error(_: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EnsembleHubError)
        return respond(from_engine(exc))

    async def any_error(_: Any, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback itself after this response is sent.
        return respond(unexpected(exc, log_it=False))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(EnsembleHubError, engine_error)
    app.add_exception_handler(Exception, any_error)
