"""Server settings: the config file's ``server:`` section, an explicit key, and the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ensemblehub_core.config import HubConfig
from ensemblehub_integrations.common import CONFIG_ENV

__all__ = ["API_KEY_ENV", "CONFIG_ENV", "ServerSettings"]

#: Bearer keys accepted by the server (comma-separated), added to those of the config file.
API_KEY_ENV = "ENSEMBLEHUB_API_KEY"


@dataclass(kw_only=True)
class ServerSettings:
    """How the server admits, queues and batches requests (see `ensemblehub_core.config.ServerConfig`).

    Attributes:
        api_keys: Accepted bearer keys; empty means no key is needed.
        preload: Ensembles built before ``/status`` answers ready.
        max_pending: Requests held at once (running or waiting); one more gets a 429.
        max_concurrency: Requests of one ensemble running at once (the rest wait in line).
        max_batch_size: Requests decoded together by a batching ensemble.
        batch_window_s: How long a batch waits for more requests to join.
        max_choices: Upper bound on ``n`` × prompts in one request.
        max_body_bytes: Largest request body accepted (a larger one gets a 413).
        request_timeout_s: A request still running after this long is stopped (0: never).
        max_tokens: The largest ``max_tokens`` a request may ask for (0: no bound but the context).
        max_prompt_tokens: The longest prompt, in a local member's tokens (0: no bound but the context).
        header_timeout_s: Deadline for a request's headers (the connection is closed).
        body_timeout_s: Deadline for a request's body (a 408).
        shutdown_grace_s: After SIGTERM, how long requests in flight may run on.
        ui: Serve the browser page at ``/ui``.
        prime_s: How long a streamed request waits for its first event before the response starts, so that
            an error found at once (a prompt longer than the context) is an HTTP error, not an error event.
    """

    api_keys: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()
    max_pending: int = 64
    max_concurrency: int = 4
    max_batch_size: int = 8
    batch_window_s: float = 0.01
    max_choices: int = 32
    max_body_bytes: int = 8 * 2**20
    request_timeout_s: float = 600.0
    max_tokens: int = 0
    max_prompt_tokens: int = 0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    shutdown_grace_s: float = 30.0
    ui: bool = True
    prime_s: float = 0.05

    @classmethod
    def from_config(
        cls, cfg: HubConfig, *, api_key: str | None = None, environ: Mapping[str, str] | None = None
    ) -> ServerSettings:
        """Settings from a config's ``server:`` section, plus ``api_key`` and ``ENSEMBLEHUB_API_KEY`` (each
        comma-separated)."""
        env = os.environ if environ is None else environ
        s = cfg.server
        keys = [*s.api_keys, *(api_key or "").split(","), *env.get(API_KEY_ENV, "").split(",")]
        if s.preload == "all":
            preload = list(cfg.ensembles)
        elif s.preload == "default":
            preload = [cfg.default_name]
        elif s.preload == "none":
            preload = []
        else:
            preload = list(s.preload)
        return cls(
            api_keys=tuple(dict.fromkeys(k.strip() for k in keys if k.strip())),
            preload=tuple(preload),
            max_pending=s.max_pending,
            max_concurrency=s.max_concurrency,
            max_batch_size=s.max_batch_size,
            batch_window_s=s.batch_window_ms / 1000,
            max_choices=s.max_choices,
            max_body_bytes=int(s.max_body_mb * 2**20),
            request_timeout_s=s.request_timeout_s,
            max_tokens=s.max_tokens,
            max_prompt_tokens=s.max_prompt_tokens,
            header_timeout_s=s.header_timeout_s,
            body_timeout_s=s.body_timeout_s,
            shutdown_grace_s=s.shutdown_grace_s,
            ui=s.ui,
        )
