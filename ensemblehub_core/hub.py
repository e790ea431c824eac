"""`Hub`: the named ensembles of one config, built on demand over one shared `ModelPool`.

Every face (CLI, HTTP server, LangChain, LiteLLM) asks a hub for ensembles by name; each is built once and
reused, and members that appear in several ensembles share one copy of their weights through the pool.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensemblehub_core.config import EnsembleConfig, HubConfig, load_config
from ensemblehub_core.context import BuildContext  # also exported here, where it was first defined
from ensemblehub_core.engine import Ensemble
from ensemblehub_core.exceptions import EnsembleHubError, ModelLoadError
from ensemblehub_core.registry import resolve
from ensemblehub_core.scorers.base import ScoringPanel
from ensemblehub_core.strategies.base import MemberPolicy, make_strategy
from ensemblehub_core.types import GenerationParams

if TYPE_CHECKING:
    from ensemblehub_core.config import MemberConfig
    from ensemblehub_core.generators.base import Generator
    from ensemblehub_core.pool import ModelPool

__all__ = ["BuildContext", "Hub", "build_ensemble"]


def _build_member(cfg: MemberConfig, ctx: BuildContext) -> Generator:
    build = resolve("backend", cfg.backend)
    try:
        return build(cfg, ctx)
    except EnsembleHubError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"member '{cfg.name}' failed to load: {type(exc).__name__}: {exc}") from exc


def build_ensemble(
    cfg: EnsembleConfig, *, name: str, pool: ModelPool | None = None, defaults: GenerationParams | None = None
) -> Ensemble:
    """Build one ensemble from its config (weights come from ``pool``, loaded at most once)."""
    from ensemblehub_core.pool import ModelPool

    ctx = BuildContext(pool=pool or ModelPool.default(), members={})
    for m in cfg.members:
        ctx.members[m.name] = _build_member(m, ctx)
    panel = None
    if cfg.scorer:
        scorers = [(resolve("scorer", s.type)(s, ctx), s.weight) for s in cfg.scorer]
        panel = ScoringPanel(scorers, exclude_own=cfg.exclude_own)
    strategy = make_strategy(cfg.strategy.name, cfg.strategy.params, f"ensembles.{name}.strategy")
    base = defaults or GenerationParams()
    gen = cfg.generation.model_dump(exclude_none=True)
    return Ensemble(
        ctx.members,
        scorer=panel,
        strategy=strategy,
        defaults=base.merged(**gen),
        policy=MemberPolicy(**cfg.policy.model_dump()),
        name=name,
    )


_shared: dict[str, Hub] = {}
_shared_lock = threading.Lock()


class Hub:
    """The configured ensembles, built lazily and cached.

    Args:
        config: A `HubConfig`, a path to a YAML file, or None for the packaged default config.
        pool: The model pool (default: the process-wide one).
    """

    def __init__(self, config: HubConfig | str | Path | None = None, *, pool: ModelPool | None = None) -> None:
        self.config = config if isinstance(config, HubConfig) else load_config(config)
        self._pool = pool
        self._built: dict[str, Ensemble] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @classmethod
    def shared(cls, config: HubConfig | str | Path | None = None) -> Hub:
        """The process-wide hub of a config file (None: the packaged default config), so every face and call
        over one config shares its built ensembles; a `HubConfig` object gets a hub of its own."""
        if isinstance(config, HubConfig):
            return cls(config)
        key = str(Path(config).resolve()) if config is not None else ""
        with _shared_lock:
            if key not in _shared:
                _shared[key] = cls(config)
            return _shared[key]

    @property
    def pool(self) -> ModelPool:
        from ensemblehub_core.pool import ModelPool

        return self._pool or ModelPool.default()

    def names(self) -> list[str]:
        return list(self.config.ensembles)

    @property
    def default_name(self) -> str:
        return self.config.default_name

    def ensemble(self, name: str | None = None) -> Ensemble:
        """The named ensemble (default: the config's default), built on first use."""
        name = name or self.default_name
        self.config.get(name)  # raises a ConfigError listing the configured names
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self._built:
                self._built[name] = self.build(self.config.ensembles[name], name=name)
            return self._built[name]

    def build(self, cfg: EnsembleConfig, *, name: str) -> Ensemble:
        """Build an ensemble from ``cfg`` with this hub's generation defaults and model pool, not cached (for
        ensembles made at run time, e.g. with a calibration fitted in the same process)."""
        defaults = GenerationParams().merged(**self.config.defaults.model_dump(exclude_none=True))
        return build_ensemble(cfg, name=name, pool=self.pool, defaults=defaults)

    def describe(self) -> list[dict[str, Any]]:
        """What `ensemblehub models` prints: each ensemble's members, scorers and strategy."""
        out = []
        for name, cfg in self.config.ensembles.items():
            out.append({
                "name": name,
                "description": cfg.description,
                "strategy": {"name": cfg.strategy.name, **cfg.strategy.params},
                "members": [
                    {"name": m.name, "backend": m.backend, "model": m.model} for m in cfg.members
                ],
                "scorers": [
                    {"type": s.type, "member": s.member, "model": s.model, "weight": s.weight} for s in cfg.scorer
                ],
                "default": name == self.default_name,
            })
        return out
