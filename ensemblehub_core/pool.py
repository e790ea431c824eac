"""`ModelPool`: each model loads once per process and is shared by every ensemble and request.

Two members (or a member and a scorer) that name the same `ModelSpec` get the very same `LoadedModel`.
Loads are serialised per spec, not globally: many threads asking for one spec load it exactly once,
while different specs load in parallel.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import ClassVar

from ensemblehub_core.exceptions import EnsembleHubError, ModelLoadError
from ensemblehub_core.models.loader import LoadedModel, ModelSpec

__all__ = ["Loader", "ModelPool"]

logger = logging.getLogger(__name__)

#: Turns a spec into a loaded model; `load_model` by default, a fake in tests.
Loader = Callable[[ModelSpec], LoadedModel]


def _default_loader(spec: ModelSpec) -> LoadedModel:
    # Looked up at call time so a test that monkeypatches loader.load_model is honoured.
    from ensemblehub_core.models import loader

    return loader.load_model(spec)


class ModelPool:
    """A thread-safe cache of loaded models keyed by `ModelSpec` (every field counts).

    Args:
        loader: Loads one spec; defaults to `load_model`. Tests inject a fake.
    """

    _default: ClassVar[ModelPool | None] = None
    _default_guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, loader: Loader | None = None) -> None:
        self._loader: Loader = loader or _default_loader
        self._models: dict[ModelSpec, LoadedModel] = {}
        self._key_locks: dict[ModelSpec, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the two dicts, never held while loading

    @classmethod
    def default(cls) -> ModelPool:
        """The process-wide shared pool (created on first use)."""
        with cls._default_guard:
            if cls._default is None:
                cls._default = cls()
            return cls._default

    def set_loader(self, loader: Loader | None) -> None:
        """Replace the loader used for specs not loaded yet (None restores `load_model`)."""
        self._loader = loader or _default_loader

    def get(self, spec: ModelSpec) -> LoadedModel:
        """The loaded model for ``spec``, loading it on first use.

        Raises:
            ModelLoadError: the load failed (nothing is cached; the next call tries again).
            ConfigError: the spec names something unknown.
        """
        with self._lock:
            found = self._models.get(spec)
            if found is not None:
                return found
            # Key locks are kept for the pool's life: dropping one while a thread waits on it could let a
            # third thread create a fresh lock and load the same spec twice.
            key_lock = self._key_locks.setdefault(spec, threading.Lock())
        with key_lock:
            with self._lock:
                found = self._models.get(spec)
            if found is not None:  # another thread loaded it while we waited
                return found
            loaded = self._load(spec)
            with self._lock:
                self._models[spec] = loaded
            return loaded

    def _load(self, spec: ModelSpec) -> LoadedModel:
        try:
            return self._loader(spec)
        except EnsembleHubError:
            raise
        except Exception as exc:  # an injected loader may raise anything; callers catch our tree only
            detail = f"{type(exc).__name__}: {exc}"
            raise ModelLoadError(f"could not load model '{spec.source}': {detail}") from exc

    def loaded(self) -> list[ModelSpec]:
        """The specs loaded so far, oldest first."""
        with self._lock:
            return list(self._models)

    def evict(self, spec: ModelSpec) -> None:
        """Forget ``spec``'s model (its memory is freed once no generator holds it); no-op if absent."""
        with self._lock:
            self._models.pop(spec, None)

    def clear(self) -> None:
        """Forget every model."""
        with self._lock:
            self._models.clear()

    def __contains__(self, spec: object) -> bool:
        with self._lock:
            return spec in self._models

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)
