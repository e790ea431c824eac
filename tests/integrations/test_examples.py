"""The LangChain and LiteLLM examples, run in-process on the packaged config's real embedded models."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from langchain_core.messages import AIMessage, ToolMessage

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.slow


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chain_example(capsys: pytest.CaptureFixture[str]) -> None:
    answer = load("langchain_chain").main(["What is the capital of France?", "--max-tokens", "24"])
    assert "Paris" in answer and "Paris" in capsys.readouterr().out


def test_create_agent_example_picks_one_of_two_tools_and_answers(capsys: pytest.CaptureFixture[str]) -> None:
    # langchain.agents.create_agent (a LangGraph graph) over ChatEnsemble on Qwen2.5-0.5B, two tools offered.
    messages = load("langchain_agent").main(["What time is it in Oslo?", "--max-tokens", "48"])
    results = [m for m in messages if isinstance(m, ToolMessage)]
    assert results and results[0].name == "get_local_time" and results[0].content == "14:05 (UTC+1)"
    assert isinstance(messages[-1], AIMessage) and not messages[-1].tool_calls and messages[-1].content
    assert "-> get_local_time(" in capsys.readouterr().out


def test_litellm_example() -> None:
    assert "Paris" in load("litellm_usage").main(["What is the capital of France?", "--max-tokens", "16"])
