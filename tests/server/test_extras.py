"""Says loudly when the server tests cannot run (the other test modules are then not collected)."""

from __future__ import annotations

import pytest

from tests.server.conftest import MISSING


def test_server_extras_are_installed() -> None:
    if MISSING:
        pytest.skip(f"server tests NOT run: {', '.join(MISSING)} missing; pip install 'ensemblehub[server,dev]'")
