"""LangChain's own standard suites (langchain-tests, pinned in the dev extra) run against `ChatEnsemble`.

The unit suite runs on fake members. The integration suite runs on real small models from the packaged config:
``qwen-0.5b`` (Qwen2.5-Coder-0.5B-Instruct, the one embedded model that follows the tool-call format reliably,
alone under the ``single`` strategy) so that its ~65 model calls fit the test budget on a 2-core CPU; the
model-override tests route to ``duo`` (Qwen + SmolLM2, segments scored by Qwen's likelihood), so the suite
also runs a real multi-member ensemble end to end. Every tool-calling and structured-output test is enabled.
Tests the suite skips by itself: image/audio/PDF inputs (members read text only; the flags say so), the
VCR timing benchmark (there is no HTTP traffic to record) and serialisation (the model is not serialisable).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from ensemblehub_integrations.langchain import ChatEnsemble

FAKE_CONFIG = str(Path(__file__).parent / "configs" / "fake.yaml")


class TestChatEnsembleUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatEnsemble]:
        return ChatEnsemble

    @property
    def chat_model_params(self) -> dict[str, object]:
        return {"config": FAKE_CONFIG, "model": "fake"}

    @property
    def standard_chat_model_params(self) -> dict[str, object]:
        # The unit suite adds api_key="test" for hosted models; an ensemble has no key of its own (API members
        # take theirs from the config), and ChatEnsemble refuses arguments it would ignore.
        params = dict(super().standard_chat_model_params)
        params.pop("api_key", None)
        return params

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, object], dict[str, object]]:
        return {"ENSEMBLEHUB_CONFIG": FAKE_CONFIG}, {"model": "echo"}, {"config": FAKE_CONFIG, "model": "echo"}


@pytest.mark.slow
class TestChatEnsembleIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatEnsemble]:
        return ChatEnsemble

    @property
    def chat_model_params(self) -> dict[str, object]:
        # 64 tokens hold every tool call and structured answer the suite asks for; answers that end
        # earlier stop at the model's end-of-sequence token.
        return {"model": "qwen-0.5b", "max_tokens": 64, "temperature": 0}

    @property
    def supports_json_mode(self) -> bool:
        # JSON mode is served by a forced call of the schema as a tool, like every structured output.
        return True

    @property
    def model_override_value(self) -> str:
        return "duo"
