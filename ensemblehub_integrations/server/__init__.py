"""OpenAI-compatible HTTP server over the configured ensembles.

```bash
ensemblehub serve --config my-ensembles.yaml              # 127.0.0.1:9876
ENSEMBLEHUB_CONFIG=my-ensembles.yaml uvicorn --factory ensemblehub_integrations.server:app_from_env
```
Any OpenAI client then uses an ensemble by its name as the ``model``. See docs/server.md.
"""

from __future__ import annotations

from pathlib import Path

from ensemblehub_core.config import HubConfig
from ensemblehub_core.hub import Hub
from ensemblehub_integrations.server.app import ServerState, app_from_env, create_app
from ensemblehub_integrations.server.settings import ServerSettings

__all__ = ["ServerSettings", "ServerState", "app_from_env", "create_app", "serve"]


def serve(
    config: Hub | HubConfig | str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 9876,
    api_key: str | None = None,
    log_level: str = "info",
) -> None:
    """Run the server with uvicorn until interrupted (``ensemblehub serve``).

    The port is bound before anything else, so a port in use fails at once; models load afterwards while
    ``/status`` says ``loading``. SIGTERM drains the server (see `lifecycle.ReplicaServer`) and it returns.

    Args:
        config: A `Hub`, a `HubConfig`, a YAML path, or None for the packaged default config.
        host: Interface to bind; the default serves this machine only.
        port: TCP port.
        api_key: Require this bearer key (ENSEMBLEHUB_API_KEY and the config's ``server.api_keys`` count
            too).
        log_level: uvicorn's log level.

    Raises:
        EnsembleHubError: the address cannot be bound (a port out of range or in use).
    """
    import uvicorn

    from ensemblehub_integrations.server.lifecycle import ReplicaServer, bind, guarded_protocol

    sock = bind(host, port)
    try:
        app = create_app(config, api_key=api_key)
        settings = app.state.server.settings
        # One worker process: the models live in this process's memory and are shared by all requests.
        cfg = uvicorn.Config(app, log_level=log_level, http=guarded_protocol(settings.header_timeout_s),
                             timeout_graceful_shutdown=5)
        ReplicaServer(cfg, state=app.state.server, grace_s=settings.shutdown_grace_s).run(sockets=[sock])
    finally:
        sock.close()
