"""API members against a real OpenAI-compatible server backed by a real small model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.openai_stub import Served, create_app, serve_in_thread
from ensemblehub_core.engine import Ensemble
from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.generators.litellm import LiteLLMGenerator
from ensemblehub_core.generators.openai_compat import OpenAICompatGenerator
from ensemblehub_core.types import Message
from tests.backends.conftest import scorer

pytestmark = pytest.mark.slow
pytest.importorskip("transformers", reason="the hf extra is not installed: pip install 'ensemblehub[hf]'")

# One event loop for every async test here: API clients cached per loop (ours, LiteLLM's) must not outlive it.
SHARED_LOOP = pytest.mark.asyncio(loop_scope="session")
SOURCE = "embedded:smollm2-135m-instruct"
QUESTION = [Message(role="user", content="What is the capital of France? Answer in one sentence.")]


@pytest.fixture(scope="module")
def model_server() -> Iterator[tuple[Served, object]]:
    from ensemblehub_core.generators.hf import HFGenerator
    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.pool import ModelPool

    loaded = ModelPool.default().get(ModelSpec(source=SOURCE))
    chat = HFGenerator("served", loaded)
    text = HFGenerator("served-text", loaded, prompt_format="{input}")
    with serve_in_thread(create_app(chat, text)) as served:
        yield served, chat


@SHARED_LOOP
async def test_chat_mode_matches_the_local_model(model_server: tuple[Served, object]) -> None:
    served, local = model_server
    request = SegmentRequest(max_new_tokens=10)
    gen = OpenAICompatGenerator("api", model="smollm2", api_base=served.api_base)
    remote = await gen.complete(QUESTION, "", request)
    direct = await local.complete(QUESTION, "", request)  # type: ignore[attr-defined]
    assert "Paris" in remote.text and remote.text == direct.text  # greedy: the same tokens either way
    assert remote.token_count == direct.token_count and remote.prompt_tokens > 0


@SHARED_LOOP
async def test_prefix_continuation_over_chat(model_server: tuple[Served, object]) -> None:
    served, local = model_server
    request = SegmentRequest(max_new_tokens=8)
    prefix = "The capital of France is"
    gen = OpenAICompatGenerator("api", model="smollm2", api_base=served.api_base,
                                prefix_mode="continue_final_message")
    remote = await gen.complete(QUESTION, prefix, request)
    direct = await local.complete(QUESTION, prefix, request)  # type: ignore[attr-defined]
    assert remote.text == direct.text and "Paris" in remote.text


@SHARED_LOOP
async def test_completions_mode_continues_raw_text(model_server: tuple[Served, object]) -> None:
    served, _ = model_server
    gen = OpenAICompatGenerator("api", model="smollm2", api_base=served.api_base, mode="completions",
                                prompt_format="Q: {input}\nA:", stream=True)
    cand = await gen.complete(QUESTION, " The capital of France is", SegmentRequest(max_new_tokens=6))
    assert "Paris" in cand.text
    assert served.log.bodies[-1]["prompt"].endswith("A: The capital of France is")


def test_segment_ensemble_of_openai_and_litellm_members(model_server: tuple[Served, object]) -> None:
    served, _ = model_server
    members = [
        OpenAICompatGenerator("via-openai", model="smollm2", api_base=served.api_base),
        LiteLLMGenerator("via-litellm", model="openai/smollm2", api_base=served.api_base),
    ]
    ens = Ensemble(members, scorer=scorer(), strategy="segment", strategy_params={"segment_tokens": 6})
    result = ens.generate(QUESTION, max_tokens=12)
    assert "Paris" in result.text
    assert result.trace and all(len(t.candidates) == 2 and not t.errors for t in result.trace)


def test_mixed_example_runs_offline(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "mixed_ensemble.py"
    spec = importlib.util.spec_from_file_location("example_mixed_ensemble", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    answer = module.main(["--max-tokens", "10"])
    assert "Paris" in answer and "'api'" in capsys.readouterr().out  # both members wrote candidates
