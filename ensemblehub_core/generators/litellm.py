"""`LiteLLMGenerator`: a member reached through LiteLLM's ``acompletion`` (any provider LiteLLM knows).

The model is a LiteLLM model string: ``openai/gpt-4o-mini``, ``anthropic/claude-3-5-haiku-latest``,
``ollama/llama3``, or ``openai/<route>`` with ``api_base`` pointing at a LiteLLM proxy or any OpenAI-compatible
server. LiteLLM's own retries are switched off (``num_retries=0``): the ensemble's `MemberPolicy` owns
timeouts, retries and backoff. Text level only: `supports_distributions` is False, so token-level strategies
(GaC, UniTE) refuse this member with a `CapabilityError` before they start.

Config::

    - name: claude
      backend: litellm
      model: anthropic/claude-3-5-haiku-latest
      options:
        api_key_env: ANTHROPIC_API_KEY    # optional: LiteLLM also reads the provider's usual variable
        api_base: null                    # a proxy or self-hosted server
        prefix_mode: assistant            # see `_api.chat_payload`
        timeout_s: 60

Tools: the request's tools go to the model natively (``tools``, ``tool_choice``, tool turns as OpenAI tool
messages, which LiteLLM translates for its provider) and the answer's ``tool_calls`` come back as
``<tool_call>`` blocks in the candidate's text (see `_api`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ensemblehub_core.exceptions import ConfigError, GeneratorError
from ensemblehub_core.generators._api import (
    NO_KEY,
    Secret,
    api_error,
    chat_payload,
    check_prefix_mode,
    finish_candidate,
    native_calls,
    parse_retry_after,
    read_options,
    sampling_args,
    tool_fields,
)
from ensemblehub_core.generators.base import Generator, SegmentRequest
from ensemblehub_core.types import Candidate, Message

if TYPE_CHECKING:
    from ensemblehub_core.config import MemberConfig
    from ensemblehub_core.context import BuildContext

__all__ = ["LiteLLMGenerator", "build"]


def _litellm() -> Any:
    # Without this LiteLLM fetches its model cost map from the network at import time.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # its help banner would land in every member error's log
    return litellm


class LiteLLMGenerator(Generator):
    """One model called through ``litellm.acompletion``.

    Args:
        name: Member name.
        model: A LiteLLM model string (``provider/model``).
        api_base: Optional base URL (a LiteLLM proxy, a self-hosted OpenAI-compatible server).
        api_key: Optional key (a `Secret`); None lets LiteLLM read the provider's usual environment variable.
        prefix_mode: How the accepted prefix is continued: one of `PREFIX_MODES`.
        timeout_s: Timeout of one call.
        max_retry_after_s: Upper bound on a server's ``Retry-After``.
        extra: Extra keyword arguments for ``acompletion`` (provider-specific options).
    """

    supports_distributions = False
    supports_top_logprobs = False

    def __init__(
        self,
        name: str,
        *,
        model: str,
        api_base: str | None = None,
        api_key: Secret | None = None,
        prefix_mode: str = "assistant",
        timeout_s: float = 60.0,
        max_retry_after_s: float = 60.0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(name)
        check_prefix_mode(name, prefix_mode)
        self.model = model
        self.api_base = api_base
        self._key = api_key or Secret(None)
        self.prefix_mode = prefix_mode
        self.timeout_s = timeout_s
        self.max_retry_after_s = max_retry_after_s
        self.extra = dict(extra or {})

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, model={self.model!r}, api_base={self.api_base!r}, "
            f"api_key={self._key!r})"
        )

    async def complete(self, messages: Sequence[Message], prefix: str, request: SegmentRequest) -> Candidate:
        litellm = _litellm()
        started = time.perf_counter()
        tools = request.tools
        msgs, extra_body = chat_payload(messages, prefix, self.prefix_mode)
        args: dict[str, Any] = {
            **self.extra,
            "model": self.model,
            "messages": msgs,
            **sampling_args(request),
            **tool_fields(tools),
            "timeout": self.timeout_s,
            "num_retries": 0,
        }
        if self.api_base:
            args["api_base"] = self.api_base
        if self._key:
            args["api_key"] = self._key.reveal()
        elif self.api_base:
            # A self-hosted base needs no key, and LiteLLM would otherwise send the provider's env key to it.
            args["api_key"] = NO_KEY
        if extra_body:
            args["extra_body"] = {**args.get("extra_body", {}), **extra_body}
        try:
            resp = await litellm.acompletion(**args)
        except Exception as exc:
            raise self._map_error(exc) from exc
        choices = getattr(resp, "choices", None)
        if not choices:
            raise GeneratorError(self.name, f"{self.model} returned no choices")
        choice = choices[0]
        usage = getattr(resp, "usage", None)
        return finish_candidate(
            self.name, choice.message.content or "", request, server_finish=choice.finish_reason,
            completion_tokens=getattr(usage, "completion_tokens", None),
            prompt_tokens=getattr(usage, "prompt_tokens", None), started=started,
            calls=native_calls(getattr(choice.message, "tool_calls", None)), tools=tools,
        )

    def _map_error(self, exc: Exception) -> GeneratorError:
        """The one place LiteLLM's errors become `GeneratorError` (key masked, Retry-After kept)."""
        status = getattr(exc, "status_code", None)
        retry = None
        for headers in (getattr(exc, "headers", None), getattr(getattr(exc, "response", None), "headers", None),
                        getattr(exc, "litellm_response_headers", None)):
            if headers:
                retry = parse_retry_after(dict(headers), self.max_retry_after_s)
                if retry is not None:
                    break
        message = str(getattr(exc, "message", None) or exc)
        what = f"HTTP {status}" if isinstance(status, int) else type(exc).__name__
        import litellm

        return api_error(self.name, f"{what} from {self.model}: {message}", self._key, retry_after=retry,
                         timed_out=isinstance(exc, litellm.Timeout))


def build(cfg: MemberConfig, ctx: BuildContext) -> LiteLLMGenerator:
    """Build from config: ``model`` (or ``options.model``) is a LiteLLM model string."""
    opts = read_options(cfg)
    if not opts.model:
        raise ConfigError(
            f"member '{cfg.name}': backend 'litellm' needs 'model', a LiteLLM model string such as "
            "'openai/gpt-4o-mini' or 'anthropic/claude-3-5-haiku-latest'"
        )
    return LiteLLMGenerator(
        cfg.name,
        model=opts.model,
        api_base=opts.api_base,
        api_key=opts.api_key,
        prefix_mode=opts.prefix_mode,
        timeout_s=opts.timeout_s,
        max_retry_after_s=opts.max_retry_after_s,
        extra=opts.rest,
    )
