"""Fixtures for the model-loading tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ensemblehub_core.models import LoadedModel, ModelSpec


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty private cache folder (for tests that convert with a fake converter)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ENSEMBLEHUB_CACHE", str(cache))
    return cache


@pytest.fixture
def fake_loaded() -> Callable[[ModelSpec], LoadedModel]:
    """Builds a `LoadedModel` without weights, for pool logic."""

    def make(spec: ModelSpec) -> LoadedModel:
        return LoadedModel(
            spec=spec, model=object(), tokenizer=object(), path=f"/fake/{spec.source}",
            eos_token_ids=[0], context_length=16, has_chat_template=False,
        )

    return make
