"""Real small members shared by the strategy tests: each model loads once per test session (through the pool)."""

from __future__ import annotations

import pytest

from ensemblehub_core.generators.hf import HFGenerator

GEMMA_FORMAT = (
    "Question: What is the capital of Italy?\nAnswer: The capital of Italy is Rome.\n\n"
    "Question: What is 6 + 7?\nAnswer: 6 + 7 = 13. The answer is 13.\n\nQuestion: {input}\nAnswer:"
)


def _loaded(source: str):  # type: ignore[no-untyped-def]
    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.pool import ModelPool

    return ModelPool.default().get(ModelSpec(source=source))


@pytest.fixture(scope="session")
def smol() -> HFGenerator:
    """SmolLM2-135M-Instruct: 49k byte-level BPE."""
    return HFGenerator("smol", _loaded("embedded:smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def qwen() -> HFGenerator:
    """Qwen2.5-Coder-0.5B-Instruct: 152k byte-level BPE."""
    return HFGenerator("qwen", _loaded("embedded:qwen2.5-coder-0.5b-instruct"))


@pytest.fixture(scope="session")
def gemma() -> HFGenerator:
    """Gemma-3-270M base with a few-shot prompt: 262k SentencePiece."""
    return HFGenerator(
        "gemma", _loaded("embedded:gemma3-270m"), prompt_format=GEMMA_FORMAT, end_strings=["\nQuestion:", "\n\n\n"]
    )


@pytest.fixture(scope="session")
def llama() -> HFGenerator:
    """A 1M-parameter random Llama: 32k Llama-2 SentencePiece with a dummy prefix (gibberish, fast)."""
    return HFGenerator("llama", _loaded("embedded:tiny-random-llama"), prompt_format="{input}")
