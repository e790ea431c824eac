"""Names and types a user types are checked, in every face: misspelt arguments, unknown member options, an
empty model name, wrong parameter types, strategy-parameter typos. Each is refused with a message that says
what to do, through the real client (langchain-core, litellm, the openai client)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from langchain_core.tools import tool
from pydantic import ValidationError

from ensemblehub_core.config import parse_config
from ensemblehub_core.engine import Ensemble
from ensemblehub_core.exceptions import ConfigError, InputError
from ensemblehub_core.generators.function import FunctionGenerator
from ensemblehub_core.hub import Hub
from ensemblehub_integrations.langchain import ChatEnsemble
from ensemblehub_integrations.litellm import EnsembleLLM, register

FAKE = str(Path(__file__).parent / "configs" / "fake.yaml")
USER = [{"role": "user", "content": "What is 6 * 7?"}]


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return f"sunny in {location}"


# -- LangChain -----------------------------------------------------------------------------------------------
def test_chat_openai_names_are_accepted() -> None:
    llm = ChatEnsemble(config=FAKE, model_name="echo", max_completion_tokens=8)
    assert (llm.model, llm.max_tokens) == ("echo", 8)
    assert llm.invoke("hi").response_metadata["model_name"] == "echo"  # not the default ensemble 'fake'


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"modle": "echo"}, "unknown argument(s) modle; allowed:"),
    ({"max_token": 8}, "unknown argument(s) max_token"),
    ({"model": "echo", "model_name": "steps"}, "got both model='echo' and model_name='steps'"),
    ({"model_kwargs": {"frequency_penalty": 1}}, "takes no model_kwargs"),
    ({"temperature": "hot"}, "temperature"),
])
def test_chat_ensemble_refuses_unknown_or_wrong_arguments(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=r"ChatEnsemble|temperature") as err:
        ChatEnsemble(config=FAKE, **kwargs)
    assert words in str(err.value)


def test_wrong_types_at_call_time_are_a_clear_error() -> None:
    with pytest.raises(InputError, match="temperature must be a number, got str 'hot'"):
        ChatEnsemble(config=FAKE, model="echo").invoke("hi", temperature="hot")
    with pytest.raises(InputError, match="stop must be a string or a list of strings"):
        ChatEnsemble(config=FAKE, model="echo").invoke("hi", stop=[1])


def test_bind_tools_strict_is_refused_at_bind_time() -> None:
    llm = ChatEnsemble(config=FAKE)
    with pytest.raises(InputError, match=r"strict=True\) is not available"):
        llm.bind_tools([get_weather], strict=True)
    with pytest.raises(InputError, match="'frequency_penalty' is not supported by ensembles"):
        llm.bind_tools([get_weather], frequency_penalty=1)
    with pytest.raises(InputError, match="unsupported call parameter"):
        llm.bind_tools([get_weather], frequency_penality=1)
    assert llm.bind_tools([get_weather], strict=False).invoke("Weather in Paris?").tool_calls


# -- config ----------------------------------------------------------------------------------------------------
def _config(member: dict[str, Any], strategy: Any = "single") -> dict[str, Any]:
    return {"ensembles": {"e": {"members": [member], "strategy": strategy}}}


@pytest.mark.parametrize(("backend", "options", "allowed"), [
    ("hf", {"temprature": 0.5}, "end_strings, gguf_file, trust_remote_code"),
    ("hf", {"end_string": ["\n"]}, "end_strings"),
    ("function", {"fn": "tests.fakes:echo", "delay": 1}, "delay_s, fn"),
    ("openai", {"api_base": "http://x/v1", "prefix": "assistant"}, "prefix_mode"),
])
def test_member_options_are_checked_per_backend(backend: str, options: dict[str, Any], allowed: str) -> None:
    member = {"name": "m", "backend": backend, "model": "x", "options": options}
    with pytest.raises(ConfigError) as err:
        parse_config(_config(member))
    bad = sorted(set(options) - {"fn", "api_base"})[0]
    assert f"ensembles.e.members.0: unknown option(s) {bad} for backend '{backend}'" in str(err.value)
    assert allowed in str(err.value)


def test_strategy_parameter_typos_read_like_config_errors(tmp_path: Path) -> None:
    member = {"name": "m", "backend": "function", "options": {"fn": "tests.fakes:echo"}}
    hub = Hub(parse_config(_config(member, {"name": "segment", "segment_tokns": 8, "max_rounds": "many"})))
    with pytest.raises(ConfigError) as err:
        hub.ensemble("e")
    text = str(err.value)
    assert "ensembles.e.strategy.segment_tokns: unknown key (check the spelling; allowed: " in text
    assert "segment_tokens" in text and "ensembles.e.strategy.max_rounds:" in text and "'many'" in text
    assert "pydantic" not in text and "type=" not in text
    with pytest.raises(ConfigError, match=r"strategy\.segment_tokns: unknown key"):
        Ensemble([FunctionGenerator("m", lambda m, p, r: "x")], strategy="segment",
                 strategy_params={"segment_tokns": 8})


# -- LiteLLM ---------------------------------------------------------------------------------------------------
@pytest.fixture
def handler() -> EnsembleLLM:
    return register(FAKE)


def test_litellm_empty_ensemble_name_is_refused(handler: EnsembleLLM) -> None:
    with pytest.raises(litellm.BadRequestError, match="names no ensemble; use 'ensemble/<name>'"):
        litellm.completion(model="ensemble/", messages=USER)


@pytest.mark.parametrize(("param", "value", "words"), [
    ("temperature", "hot", "temperature must be a number, got str 'hot'"),
    ("max_tokens", "ten", "max_tokens must be an integer"),
    ("seed", 1.5, "seed must be an integer"),
])
def test_litellm_wrong_types_are_a_400(handler: EnsembleLLM, param: str, value: Any, words: str) -> None:
    with pytest.raises(litellm.BadRequestError, match=words) as err:
        litellm.completion(model="ensemble/echo", messages=USER, **{param: value})
    assert err.value.status_code == 400
