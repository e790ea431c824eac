"""A one-member (``single``) ensemble streams its tokens as they are written, through the openai client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from ensemblehub_core.config import parse_config
from ensemblehub_integrations.server import create_app
from tests import fakes
from tests.server.conftest import Served, running

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def typist_server() -> Iterator[Served]:
    member = {"name": "typist", "backend": "function", "options": {"fn": "tests.fakes:typewriter"}}
    cfg = parse_config({"ensembles": {"typist": {"members": [member], "strategy": "single"}}})
    with running(create_app(cfg, api_key="")) as served:
        yield served


def test_sse_carries_each_token_as_it_is_written(typist_server: Served) -> None:
    client = openai.OpenAI(base_url=f"{typist_server.url}/v1", api_key="unused", max_retries=0, timeout=30)
    started = time.perf_counter()
    arrived: list[tuple[str, float]] = []
    stream: Any = client.chat.completions.create(
        model="typist", messages=[{"role": "user", "content": "Count."}], stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrived.append((chunk.choices[0].delta.content, time.perf_counter() - started))
    assert [text for text, _ in arrived] == fakes.TYPED
    assert arrived[-1][1] - arrived[0][1] > 0.1  # spread over the writing, not one burst at the end
    whole = client.chat.completions.create(model="typist", messages=[{"role": "user", "content": "Count."}])
    assert whole.choices[0].message.content == "".join(fakes.TYPED)
