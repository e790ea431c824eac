"""The faces answer alike: every engine error gets the same HTTP status from the server and the LiteLLM
provider, and a parameter no ensemble can honour gets the same 400 message from the server, `ChatEnsemble` and
the LiteLLM provider. Through the real server on 127.0.0.1 (the OpenAI wire format), LiteLLM's public API and
LangChain's ``invoke``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: stay offline

import litellm

from ensemblehub_core import exceptions
from ensemblehub_core.config import parse_config
from ensemblehub_core.exceptions import EnsembleHubError, InputError
from ensemblehub_core.registry import register as register_class
from ensemblehub_core.strategies.base import RunContext, Strategy, TextDelta
from ensemblehub_core.types import RoundTrace
from ensemblehub_integrations.common import error_status, unsupported
from ensemblehub_integrations.langchain import ChatEnsemble
from ensemblehub_integrations.litellm import register

pytest.importorskip("fastapi")

USER = [{"role": "user", "content": "Hi"}]
RAISE: list[EnsembleHubError] = []


class Raising(Strategy):
    """A strategy that raises the error the test put in ``RAISE`` (a member's own errors would reach the faces
    as that member's failure; this raises each class of the tree as the engine would)."""

    name: ClassVar[str] = "raising"

    async def run(self, ctx: RunContext) -> AsyncIterator[RoundTrace | TextDelta]:
        raise RAISE[0]
        yield  # an async generator, as the engine iterates it


register_class("strategy", "raising", "tests.integrations.test_faces_agree:Raising")


def _tree(cls: type[EnsembleHubError] = EnsembleHubError) -> list[type[EnsembleHubError]]:
    """Every class of the exception tree, the root included (a new one is covered without editing here)."""
    return [cls, *(c for sub in cls.__subclasses__() for c in _tree(sub))]


def _instance(cls: type[EnsembleHubError]) -> EnsembleHubError:
    if cls is exceptions.GeneratorError:
        return cls("m", "broke")
    if cls is exceptions.AllMembersFailed:
        return cls({"m": "broke"})
    return cls("broke")


CONFIG = parse_config({"ensembles": {
    "raising": {"members": [{"name": "m", "backend": "function", "options": {"fn": "tests.fakes:echo"}}],
                "strategy": "raising"},
    "echo": {"members": [{"name": "e", "backend": "function", "options": {"fn": "tests.fakes:echo"}}],
             "strategy": "single"},
}})


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    from ensemblehub_integrations.server import create_app
    from ensemblehub_integrations.server.threaded import serve_in_thread

    with serve_in_thread(create_app(CONFIG, api_key=""), graceful_s=1) as served:
        yield served.url


@pytest.mark.parametrize("cls", _tree(), ids=lambda c: c.__name__)
def test_every_engine_error_has_one_status_in_the_server_and_litellm(server_url: str, cls: Any) -> None:
    import httpx2

    RAISE[:] = [_instance(cls)]
    expected = error_status(RAISE[0]).status
    r = httpx2.post(f"{server_url}/v1/chat/completions", json={"model": "raising", "messages": USER}, timeout=30)
    assert r.status_code == expected, r.text
    assert r.json()["error"]["code"] == error_status(RAISE[0]).code
    register(CONFIG)
    with pytest.raises(Exception) as err:  # LiteLLM's error class for the status (BadRequestError, ...)
        litellm.completion(model="ensemble/raising", messages=USER)
    assert getattr(err.value, "status_code", None) == expected, repr(err.value)


@pytest.mark.parametrize("param", ["logit_bias", "response_format", "frequency_penalty"])
def test_a_parameter_no_ensemble_honours_gets_one_message_from_every_face(server_url: str, param: str) -> None:
    import httpx2

    value: Any = {"logit_bias": {"50256": -100}, "response_format": {"type": "json_object"},
                  "frequency_penalty": 0.5}[param]
    message = str(unsupported(param))
    r = httpx2.post(f"{server_url}/v1/chat/completions", json={"model": "echo", "messages": USER, param: value},
                    timeout=30)
    assert r.status_code == 400
    assert r.json()["error"] == {"message": message, "type": "invalid_request_error", "param": param,
                                 "code": "unsupported_parameter"}
    with pytest.raises(InputError) as lc:
        _langchain(param, value)
    assert str(lc.value) == message
    register(CONFIG)
    # LiteLLM drops or refuses what the provider does not list before the provider sees it; a caller may let a
    # parameter through (allowed_openai_params), and then the provider refuses it with the same message.
    with pytest.raises(litellm.BadRequestError) as ll:
        litellm.completion(model="ensemble/echo", messages=USER, allowed_openai_params=[param], **{param: value})
    assert ll.value.status_code == 400 and message in str(ll.value)


def _langchain(param: str, value: Any) -> None:
    from ensemblehub_core.engine import Ensemble
    from ensemblehub_core.generators.function import FunctionGenerator
    from tests import fakes

    ens = Ensemble([FunctionGenerator("e", fakes.echo)], strategy="single", name="echo")
    ChatEnsemble(ensemble=ens, model="echo").invoke("Hi", **{param: value})
