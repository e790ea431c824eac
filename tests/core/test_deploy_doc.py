"""The configs in docs/deploy.md are valid: the replica config builds, the proxy config has what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ensemblehub_core.config import parse_config
from ensemblehub_core.hub import Hub

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def _block(first_line: str) -> dict[str, object]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    text = next(b for b in blocks if b.startswith(first_line))
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def test_replica_config_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openai")
    monkeypatch.setenv("MEMBER_KEY", "unused")
    hub = Hub(parse_config(_block("# ensembles.yaml")))
    for name in hub.names():
        ens = hub.ensemble(name)  # members are built (no request is sent)
        assert list(ens.members) == ["qwen-7b", "llama-8b"]


def test_proxy_config_routes_one_name_to_every_replica() -> None:
    cfg = _block("# litellm-config.yaml")
    deployments = [m for m in cfg["model_list"] if m["model_name"] == "fuse-duo"]  # type: ignore[index, union-attr]
    assert len(deployments) == 3
    assert cfg["router_settings"]["num_retries"] >= 1  # type: ignore[index]
