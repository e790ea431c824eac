"""`ChatEnsemble.get_num_tokens` / `get_num_tokens_from_messages` count with the members' own tokenizer (not
LangChain's GPT-2 fallback), so `trim_messages` and memory work; on a real small model."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, trim_messages
from langchain_core.tools import tool

from ensemblehub_integrations.langchain import ChatEnsemble

pytestmark = pytest.mark.slow


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return f"sunny in {location}"


@pytest.fixture(scope="module")
def smol() -> ChatEnsemble:
    llm = ChatEnsemble(model="smollm2-135m", max_tokens=2)  # the packaged config: SmolLM2 alone
    try:
        llm.invoke("Hi")
    except Exception as exc:  # pragma: no cover - the embedded model cannot load here
        pytest.skip(f"embedded model cannot load: {exc}")
    return llm


def test_counts_are_the_members_tokens(smol: ChatEnsemble) -> None:
    tokenizer = smol._resolve(None).counting_member.tokenizer  # type: ignore[attr-defined]
    text = "Ensembles of small language models, counted by their own tokenizer."
    assert smol.get_num_tokens(text) == len(tokenizer.encode(text, add_special_tokens=False)) > 0
    assert smol.get_token_ids(text) == tokenizer.encode(text, add_special_tokens=False)
    messages = [SystemMessage("Be brief."), HumanMessage("What is the capital of France?")]
    counted = smol.get_num_tokens_from_messages(messages)
    assert counted == smol.invoke(messages).usage_metadata["input_tokens"]  # type: ignore[index]
    with_tools = smol.get_num_tokens_from_messages(messages, tools=[get_weather])
    assert with_tools > counted  # the tools are part of the prompt
    assert with_tools == smol.bind_tools([get_weather]).invoke(messages).usage_metadata["input_tokens"]  # type: ignore[union-attr]


def test_trim_messages_uses_the_ensemble_as_token_counter(smol: ChatEnsemble) -> None:
    history = [SystemMessage("Be brief.")]
    for i in range(12):
        history += [HumanMessage(f"Question number {i}: what is {i} + {i}?"), AIMessage(f"It is {2 * i}.")]
    history.append(HumanMessage("And 7 + 7?"))
    trimmed = trim_messages(history, max_tokens=120, token_counter=smol, strategy="last", include_system=True,
                            start_on="human")
    assert 1 < len(trimmed) < len(history) and trimmed[-1].content == "And 7 + 7?"
    assert smol.get_num_tokens_from_messages(trimmed) <= 120
