"""`VLLMGenerator`: a local model run in-process by vLLM (``vllm.LLM``).

vLLM batches requests and keeps a prefix cache of KV blocks (automatic prefix caching, on by default here), so
a segment round that re-sends the prompt and the accepted prefix pays only for the blocks that are new: the
engine, not the session, keeps the work of earlier rounds. ``complete_many`` sends all prompts in one
``generate`` call, which vLLM schedules as one batch.

Token-level strategies get a top-k view (`VLLMTokenSession`): each step asks the engine for one token with its
``logprobs`` top-k list, which is what `unite` needs; vLLM does not return full distributions, so `gac` rejects
vLLM members with a clear message.

Engines are shared: every member that names the same model folder, dtype and engine options in one process
uses one ``vllm.LLM`` (loading one costs seconds to minutes). vLLM pins its own torch and transformers; install
it in its own virtual environment (``make vllm-env`` builds ``.venv-vllm`` with the CPU build).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ensemblehub_core._text import cut_text
from ensemblehub_core.exceptions import ConfigError, GeneratorError, InputError, ModelLoadError
from ensemblehub_core.generators.base import Generator, GeneratorSession, PrefixSession, SegmentRequest
from ensemblehub_core.generators.hf_tokens import RetokenizedSession, TailEncoder
from ensemblehub_core.generators.prompting import TokenizerPrompt
from ensemblehub_core.generators.tokens import Piece, ranked_pieces
from ensemblehub_core.tools import ToolSpec
from ensemblehub_core.types import Candidate, Message

if TYPE_CHECKING:
    from ensemblehub_core.config import MemberConfig
    from ensemblehub_core.context import BuildContext

__all__ = ["VLLMEngine", "VLLMGenerator", "VLLMTokenSession", "engine_for"]

#: Engine options a member may set under ``options`` (passed to ``vllm.LLM``).
ENGINE_OPTIONS = (
    "enable_prefix_caching", "max_model_len", "gpu_memory_utilization", "enforce_eager", "max_logprobs",
    "max_num_seqs", "seed", "swap_space", "kv_cache_memory_bytes",
)
_DEFAULTS: dict[str, Any] = {"enable_prefix_caching": True, "max_logprobs": 20}


class VLLMEngine:
    """One loaded ``vllm.LLM`` and the lock that serialises calls into it (it is not thread-safe).

    Attributes:
        llm: The engine.
        tokenizer: Its Hugging Face tokenizer.
        context_length: The engine's ``max_model_len``.
        eos_ids: End-of-sequence token ids (tokenizer and generation config).
        counts: Prompt tokens sent and how many the prefix cache already held.
    """

    def __init__(self, folder: str, dtype: str, options: dict[str, Any]) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ModelLoadError(
                "backend 'vllm' needs vLLM, which pins its own torch and transformers: build its environment "
                "with `make vllm-env` (CPU) or `pip install vllm` in a CUDA environment, and run from there"
            ) from exc
        from ensemblehub_core.models.loader import collect_eos_token_ids

        self.folder = folder
        settings = {**_DEFAULTS, **options}
        try:
            self.llm = LLM(model=folder, dtype=dtype, **settings)
        except Exception as exc:  # vLLM raises anything from ValueError to RuntimeError on a bad start
            raise ModelLoadError(f"vLLM could not load {folder}: {type(exc).__name__}: {exc}") from exc
        self.tokenizer = self.llm.get_tokenizer()
        self.context_length = int(self.llm.llm_engine.model_config.max_model_len)
        self.eos_ids = set(collect_eos_token_ids(self.tokenizer))
        self.lock = threading.Lock()
        #: Prompt tokens sent, and how many of them the engine found in its prefix cache.
        self.counts = {"prompt_tokens": 0, "cached_tokens": 0}
        self.max_logprobs = int(settings["max_logprobs"])

    def generate(self, prompts: list[list[int]], params: list[Any]) -> list[Any]:
        """Run ``prompts`` (token ids) in one batch; one ``SamplingParams`` per prompt."""
        from vllm.inputs import TokensPrompt

        with self.lock:
            outputs = list(self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                             use_tqdm=False))
            for out, p in zip(outputs, prompts, strict=True):
                self.counts["prompt_tokens"] += len(p)
                self.counts["cached_tokens"] += int(getattr(out, "num_cached_tokens", 0) or 0)
        return outputs


_ENGINES: dict[tuple[str, str, tuple[tuple[str, Any], ...]], VLLMEngine] = {}
_ENGINES_GUARD = threading.Lock()


def engine_for(folder: str, dtype: str, options: dict[str, Any]) -> VLLMEngine:
    """The process-wide engine for (folder, dtype, options), started on first use."""
    key = (folder, dtype, tuple(sorted(options.items())))
    with _ENGINES_GUARD:  # held while loading: two engines starting at once would both reserve memory
        if key not in _ENGINES:
            _ENGINES[key] = VLLMEngine(folder, dtype, options)
        return _ENGINES[key]


class VLLMGenerator(TokenizerPrompt, Generator):
    """A vLLM engine as an ensemble member.

    Args:
        name: Member name.
        engine: The shared engine (see `engine_for`).
        prompt_format: ``"chat"`` or a template with ``{input}`` (as for `HFGenerator`).
        system_prompt: Added as a system message when the conversation has none (chat format only).
        end_strings: Strings that end this member's answer as its EOS would.
    """

    supports_incremental = True  # through the engine's prefix cache
    supports_top_logprobs = True
    local_compute = True

    def __init__(
        self,
        name: str,
        engine: VLLMEngine,
        *,
        prompt_format: str | None = None,
        system_prompt: str | None = None,
        end_strings: Sequence[str] = (),
    ) -> None:
        super().__init__(name)
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.end_strings = [e for e in end_strings if e]
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.setup_prompt(engine.folder, has_template, engine.context_length, prompt_format, system_prompt)

    def open_session(
        self, messages: Sequence[Message], *, incremental: bool = True, tools: ToolSpec | None = None
    ) -> GeneratorSession:
        # Re-sending the prefix is what the prefix cache is for: the engine skips the blocks it holds.
        return PrefixSession(self, messages, tools=tools)

    def open_token_session(self, messages: Sequence[Message], *, tools: ToolSpec | None = None) -> VLLMTokenSession:
        return VLLMTokenSession(self, messages, tools=tools)

    async def complete(self, messages: Sequence[Message], prefix: str, request: SegmentRequest) -> Candidate:
        return (await self.complete_many([(messages, prefix)], request))[0]

    async def complete_many(
        self, prompts: Sequence[tuple[Sequence[Message], str]], request: SegmentRequest
    ) -> list[Candidate]:
        ids = [self.encode_prompt(m, request.tools) + self.encode(p) for m, p in prompts]
        return await asyncio.to_thread(self._run, ids, request)

    def sampling_params(self, request: SegmentRequest, budget: int, logprobs: int | None = None) -> Any:
        """vLLM sampling parameters for ``request``; stop strings are kept in the output and cut here, so
        delimiters (kept) and stop strings (dropped) follow the same rules as every other backend."""
        from vllm import SamplingParams

        return SamplingParams(
            max_tokens=budget,
            temperature=request.temperature,
            top_p=request.top_p if request.temperature > 0 else 1.0,
            seed=request.seed,
            stop=[*request.stop, *request.delimiters, *self.end_strings] or None,
            include_stop_str_in_output=True,
            logprobs=logprobs,
            skip_special_tokens=False,
        )

    def _run(self, prompts: list[list[int]], request: SegmentRequest) -> list[Candidate]:
        longest = max(len(p) for p in prompts)
        budget = min(request.max_new_tokens, self.context_length - longest)
        if budget <= 0:
            raise InputError(f"member '{self.name}': no room left in its context of {self.context_length} tokens")
        start = time.perf_counter()
        try:
            outputs = self.engine.generate(prompts, [self.sampling_params(request, budget)] * len(prompts))
        except Exception as exc:
            raise GeneratorError(self.name, f"{type(exc).__name__}: {exc}") from exc
        elapsed = time.perf_counter() - start
        return [self._candidate(out, len(p), request, elapsed) for out, p in zip(outputs, prompts, strict=True)]

    def _candidate(self, out: Any, prompt_len: int, request: SegmentRequest, elapsed: float) -> Candidate:
        first = out.outputs[0]
        # Decoded here, as the transformers backend does: special tokens kept (tool-call markers), EOS dropped.
        text, finish = self.decode([t for t in first.token_ids if t not in self.engine.eos_ids]), "length"
        end = cut_text(text, self.end_strings, [])
        cut = cut_text(text, list(request.stop), list(request.delimiters))
        if end is not None and (cut is None or len(end.text) <= len(cut.text)):
            text, finish = end.text, "eos"
        elif cut is not None:
            text, finish = cut.text, cut.reason
        elif isinstance(first.stop_reason, str):  # a delimiter before any text: the segment is that blank
            finish = "delimiter"
        elif first.finish_reason == "stop":  # stopped by an EOS token
            finish = "eos"
        return Candidate(
            member=self.name,
            text=text,
            token_count=len(first.token_ids),
            prompt_tokens=prompt_len,
            finish_reason=finish,  # type: ignore[arg-type]
            elapsed_s=elapsed,
        )


class VLLMTokenSession(RetokenizedSession):
    """Top-k next-token view of one answer on a vLLM member (for `unite` and logit judges).

    The answer's tokenization is kept as the HF token sessions keep it (`TailEncoder`); each step sends prompt
    plus answer and asks for one token's ``logprobs``, and the prefix cache makes that cost the last block only.
    """

    full_distribution = False

    def __init__(self, gen: VLLMGenerator, messages: Sequence[Message], *, tools: ToolSpec | None = None) -> None:
        from ensemblehub_core.generators.vocab import member_vocab

        self.gen = gen
        self.member = gen.name
        self._vocab = member_vocab(gen.tokenizer, sorted(gen.engine.eos_ids))
        self._encoder = TailEncoder(gen.tokenizer, self._vocab)
        self.prompt = gen.encode_prompt(messages, tools)
        self.prompt_tokens = len(self.prompt)
        self.answer: list[int] = []
        self.ends: list[int] = []
        self.text = b""
        self.synced = True
        self._top: list[tuple[Piece, float]] | None = None
        self.calls = 0

    def changed(self, own: bool) -> None:
        self._top = None

    def top_logprobs(self, k: int) -> list[tuple[Piece, float]]:
        if self._top is None or len(self._top) < k:
            self._top = self._ask(max(k, 1))
        return self._top[:k]

    def _ask(self, k: int) -> list[tuple[Piece, float]]:
        self.retokenize()
        k = min(k, self.gen.engine.max_logprobs)
        params = self.gen.sampling_params(SegmentRequest(max_new_tokens=1), 1, logprobs=k)
        start = time.perf_counter()
        try:
            out = self.gen.engine.generate([self.prompt + self.answer], [params])[0].outputs[0]
        except Exception as exc:
            raise GeneratorError(self.member, f"{type(exc).__name__}: {exc}") from exc
        self.forward_s += time.perf_counter() - start
        self.calls += 1
        ranked = sorted(((i, lp.logprob) for i, lp in out.logprobs[0].items()), key=lambda x: x[1], reverse=True)
        return ranked_pieces(ranked, self._vocab, k)

    def stats(self) -> dict[str, Any]:
        return {"engine_calls": self.calls, "answer_tokens": len(self.answer)}


def build(cfg: MemberConfig, ctx: BuildContext) -> VLLMGenerator:
    """Build a `VLLMGenerator` from a member config (model folder resolved as for ``hf``, GGUF converted once)."""
    from ensemblehub_core.models.loader import ModelSpec, model_folder

    if not cfg.model:
        raise ConfigError(f"member '{cfg.name}': backend 'vllm' needs 'model' (e.g. embedded:smollm2-135m-instruct)")
    if cfg.device not in ("cpu", "cuda", "auto"):
        raise ConfigError(f"member '{cfg.name}': backend 'vllm' runs on the device vLLM was built for; "
                          f"leave device unset (got {cfg.device!r})")
    unknown = sorted(set(cfg.options) - set(ENGINE_OPTIONS) - {"end_strings", "gguf_file"})
    if unknown:
        raise ConfigError(f"member '{cfg.name}': unknown vllm option(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(ENGINE_OPTIONS)}, end_strings, gguf_file")
    folder = model_folder(ModelSpec(source=cfg.model, dtype=cfg.dtype, gguf_file=cfg.options.get("gguf_file")))
    engine_opts = {k: v for k, v in cfg.options.items() if k in ENGINE_OPTIONS}
    engine = engine_for(folder, cfg.dtype, engine_opts)
    return VLLMGenerator(cfg.name, engine, prompt_format=cfg.prompt_format, system_prompt=cfg.system_prompt,
                         end_strings=cfg.options.get("end_strings", ()))
