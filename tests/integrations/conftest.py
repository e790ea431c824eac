"""Settings for the face tests: offline LiteLLM (before anything imports it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# LiteLLM fetches its model cost map from the network at import unless told to use the bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

CONFIGS = Path(__file__).parent / "configs"


@pytest.fixture
def fake_config() -> Path:
    """A config whose ensembles are made of fake members (no model is loaded)."""
    return CONFIGS / "fake.yaml"
