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


def test_agent_example_calls_the_tool_and_answers_from_it(capsys: pytest.CaptureFixture[str]) -> None:
    messages = load("langchain_agent").main(["What is the weather in Paris today?", "--max-tokens", "48"])
    results = [m for m in messages if isinstance(m, ToolMessage)]
    assert results and results[0].content == "sunny, 24 °C"
    assert isinstance(messages[-1], AIMessage) and not messages[-1].tool_calls and messages[-1].content
    assert "-> get_weather(" in capsys.readouterr().out


def test_litellm_example() -> None:
    assert "Paris" in load("litellm_usage").main(["What is the capital of France?", "--max-tokens", "16"])
