"""`HFGenerator`: a local model run with Hugging Face transformers.

Sessions keep the member's KV cache for the prompt and the accepted prefix. Each round only the tokens that
are new to this member are run through the model: its own accepted segment costs nothing more, another member's
winning segment costs one forward pass over just that text. Rolling back a losing candidate crops the cache.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ensemblehub_core._text import settled_text
from ensemblehub_core.exceptions import ConfigError, GeneratorError, InputError
from ensemblehub_core.generators._hf_common import AnswerText, HFBase
from ensemblehub_core.generators.base import GeneratorSession, PrefixSession, SegmentRequest
from ensemblehub_core.models.loader import end_of_turn_id
from ensemblehub_core.tools import ToolSpec
from ensemblehub_core.types import Candidate, Message, TokenLogprob

if TYPE_CHECKING:
    from ensemblehub_core.config import MemberConfig
    from ensemblehub_core.context import BuildContext
    from ensemblehub_core.generators.hf_batch import StepBatcher
    from ensemblehub_core.generators.hf_compiled import CompiledStep
    from ensemblehub_core.generators.hf_tokens import HFTokenSession
    from ensemblehub_core.models import LoadedModel

__all__ = ["HFGenerator", "HFSession"]


class HFGenerator(HFBase):
    """A transformers causal LM as an ensemble member.

    Args:
        name: Member name.
        loaded: The pooled model and tokenizer (see `ModelPool`).
        prompt_format: ``"chat"`` to use the tokenizer's chat template, or a template with ``{input}`` for
            models without one (e.g. a few-shot prompt for a base model). Default: chat when the tokenizer has
            a template, else ``"{input}"``.
        system_prompt: Added as a system message when the conversation has none (chat format only).
        end_strings: Strings that end this member's answer as its EOS would (e.g. ``"\nQuestion:"`` for a
            few-shot base model that would otherwise write the next question itself).
        compile: Decode single tokens through ``torch.compile`` over static KV caches (`generators.hf_compiled`);
            falls back to the eager path, with the reason logged, where the model cannot take it.
        compile_max_len: Positions a static cache holds (default 4096, at most the context); longer runs decode
            eagerly.
    """

    supports_incremental = True
    supports_distributions = True
    supports_top_logprobs = True
    supports_answer_logprobs = True
    local_compute = True

    def __init__(
        self,
        name: str,
        loaded: LoadedModel,
        *,
        prompt_format: str | None = None,
        system_prompt: str | None = None,
        end_strings: Sequence[str] = (),
        compile: bool = False,
        compile_max_len: int | None = None,
    ) -> None:
        super().__init__(name)
        self.end_strings = [e for e in end_strings if e]
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.eos_ids = set(loaded.eos_token_ids)
        #: The end token this model closes an answer with (what a finished candidate is scored with).
        self.end_id = end_of_turn_id(loaded.tokenizer, loaded.eos_token_ids)
        self._batcher: StepBatcher | None = None
        self.compiled: CompiledStep | None = None
        if compile:
            from ensemblehub_core.generators.hf_compiled import compiled_step

            self.compiled = compiled_step(self.model, name, compile_max_len)
        self.setup_prompt(loaded.spec.source, loaded.has_chat_template, loaded.context_length,
                          prompt_format, system_prompt)

    # -- generation ----------------------------------------------------------------------------------------
    def open_session(
        self, messages: Sequence[Message], *, incremental: bool = True, tools: ToolSpec | None = None
    ) -> GeneratorSession:
        if not incremental:
            return PrefixSession(self, messages, tools=tools)
        return HFSession(self, messages, tools=tools)

    def open_token_session(self, messages: Sequence[Message], *, tools: ToolSpec | None = None) -> HFTokenSession:
        """Next-token logits over a growing answer, with the KV cache kept (see `generators.hf_tokens`)."""
        from ensemblehub_core.generators.hf_tokens import HFTokenSession

        return HFTokenSession(self, messages, tools=tools)

    async def complete(self, messages: Sequence[Message], prefix: str, request: SegmentRequest) -> Candidate:
        session = HFSession(self, messages, prefix=prefix, tools=request.tools)
        try:
            return await session.generate(request)
        finally:
            session.close()

    async def complete_many(
        self, prompts: Sequence[tuple[Sequence[Message], str]], request: SegmentRequest
    ) -> list[Candidate]:
        if len(prompts) <= 1:
            return [await self.complete(m, p, request) for m, p in prompts]
        ids = [self.encode_prompt(m, request.tools) + self.encode(p) for m, p in prompts]
        return await asyncio.to_thread(self._batch_decode, ids, request)

    def answer_logprobs(
        self, messages: Sequence[Message], text: str, top_k: int = 0, *, tools: ToolSpec | None = None
    ) -> list[TokenLogprob]:
        """One forward pass over prompt + answer; each answer token's log-probability and the top ``top_k``."""
        prompt = self.encode_prompt(messages, tools)
        return self.token_logprobs(prompt + self.encode(text), len(prompt), top_k)

    def score_prompt(self, prompt: str | Sequence[int], top_k: int = 0, *, extend: bool = False
                     ) -> list[TokenLogprob]:
        ids = list(self.tokenizer(prompt).input_ids) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise InputError("the prompt is empty: there is nothing to score")
        first = TokenLogprob(token=self.decode(ids[:1]), logprob=None)
        return [first, *self.token_logprobs(ids, 1, top_k, extend=extend)]

    def token_logprobs(self, ids: Sequence[int], start: int, top_k: int = 0, *, extend: bool = False
                       ) -> list[TokenLogprob]:
        """Log-probabilities of ``ids[start:]``, each given the tokens before it, in one forward pass.

        Args:
            ids: Token ids in this member's vocabulary (read as they are: no template, no special tokens added).
            start: The first position scored (at least 1: the first token has nothing before it).
            top_k: How many of the most likely tokens to list at each position.
            extend: Also append the most likely next token after ``ids`` (a greedy one-token continuation).

        Raises:
            InputError: the ids do not fit the context, hold ids outside the vocabulary, or ``start`` < 1.
        """
        import torch

        from ensemblehub_core._torch import device_lock

        ids = list(ids)
        if start < 1:
            raise InputError("the first token has nothing before it to be scored from")
        if len(ids) + extend > self.context_length:
            raise InputError(f"member '{self.name}': {len(ids) + extend} tokens are longer than its context of "
                             f"{self.context_length}")
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if any(not 0 <= t < vocab for t in ids):
            raise InputError(f"member '{self.name}': token ids must lie in [0, {vocab})")
        scored = len(ids) - start
        if scored <= 0 and not extend:
            return []
        dev = self.model.device
        with device_lock(str(dev)), torch.inference_mode():
            # The logits at the last scored + 1 positions: position i - 1 predicts token i; the last one, the
            # token after ``ids``.
            out = self.model(input_ids=torch.tensor([ids], device=dev), logits_to_keep=scored + 1)
            logp = torch.log_softmax(out.logits[0].float(), dim=-1)
        targets = ids[start:]
        if extend:
            targets.append(int(torch.argmax(logp[-1])))
        else:
            logp = logp[:-1]
        chosen = logp[torch.arange(len(targets)), torch.tensor(targets)].tolist()
        tops = torch.topk(logp, top_k, dim=-1) if top_k else None
        result = []
        for i, tok in enumerate(targets):
            top = ([(self.decode([int(t)]), float(v)) for t, v in zip(tops.indices[i], tops.values[i], strict=True)]
                   if tops is not None else [])
            result.append(TokenLogprob(token=self.decode([tok]), logprob=float(chosen[i]), top=top))
        return result

    def continuous_batcher(self, max_batch: int) -> StepBatcher | None:
        """One `StepBatcher` per member (created on first use), or None when this model's cache rows cannot be
        merged (sliding-window layers)."""
        from ensemblehub_core.generators.hf_batch import StepBatcher, mergeable

        if self._batcher is None and mergeable(self.model):
            self._batcher = StepBatcher(self, max_batch=max_batch)
        return self._batcher

    def _batch_decode(self, prompts: list[list[int]], request: SegmentRequest) -> list[Candidate]:
        """Decode several prompts in shared forward passes (left padding).

        Each step the rows' next tokens are chosen on the device and read back together, once; on an
        accelerator the next forward pass is queued before that read, so the device keeps computing while the
        host checks stop strings.
        """
        import torch

        import ensemblehub_core._torch as T

        start = time.perf_counter()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(p) for p in prompts)
        budget = min(request.max_new_tokens, self.context_length - width)
        dev = self.model.device
        n = len(prompts)
        answers = [AnswerText(self.decode) for _ in prompts]
        emitted: list[list[int]] = [[] for _ in prompts]  # new + the EOS id a row ended with
        chosen = T.ChosenLogprobs()  # per step, every row's (read once at the end)
        texts = [""] * n
        finish = ["length"] * n
        done = [False] * n
        try:
            with T.device_lock(str(dev)), torch.inference_mode():
                from transformers import DynamicCache

                gen = T.seeded_generator(request.seed, dev)
                ahead = T.reads_ahead(dev)
                cache = DynamicCache(config=self.model.config)
                input_ids, mask, positions = T.left_padded(prompts, pad, dev)
                logits = self._batch_forward(input_ids, mask, positions, cache)
                ones = torch.ones((n, 1), dtype=mask.dtype, device=dev)
                finished = torch.zeros(n, dtype=torch.bool, device=dev)  # rows that feed padding from now on
                for step in range(budget):
                    tokens = torch.where(finished, pad, T.pick_tokens(logits, request.temperature, request.top_p, gen))
                    chosen.add(logits, tokens)
                    read = T.HostRead(tokens)
                    last = step == budget - 1
                    if ahead and not last:
                        mask = torch.cat([mask, ones], dim=1)
                        positions = positions[:, -1:] + 1
                        logits = self._batch_forward(tokens.unsqueeze(1), mask, positions, cache)
                    changed = False
                    for row, tok in enumerate(read.tolist()):
                        if not done[row]:
                            emitted[row].append(tok)
                            done[row], finish[row], texts[row] = self._advance(answers[row], tok, request)
                            changed |= done[row]
                    if all(done) or last:
                        break
                    if changed:
                        finished = torch.tensor(done, device=dev)
                    if not ahead:
                        mask = torch.cat([mask, ones], dim=1)
                        positions = positions[:, -1:] + 1
                        logits = self._batch_forward(tokens.unsqueeze(1), mask, positions, cache)
        except InputError:
            raise
        except Exception as exc:
            raise GeneratorError(self.name, f"{type(exc).__name__}: {exc}") from exc
        elapsed = time.perf_counter() - start
        logprobs = chosen.rows([len(e) for e in emitted])
        return [
            Candidate(
                member=self.name,
                text=texts[i],
                token_count=len(answers[i].ids) + (1 if finish[i] == "eos" else 0),
                prompt_tokens=len(prompts[i]),
                finish_reason=finish[i],  # type: ignore[arg-type]
                elapsed_s=elapsed,
                token_ids=emitted[i],
                token_logprobs=logprobs[i],
            )
            for i in range(len(prompts))
        ]


@dataclass(kw_only=True)
class _Proposal:
    """The last candidate a session generated and has not yet been told the fate of."""

    ids: list[int]
    text: str
    fed: int  # how many of ``ids`` are already in the KV cache
    exact: bool  # text is exactly the decoded ids (nothing was cut away)
    candidate: Candidate


class HFSession(GeneratorSession):
    """One conversation on one local member, with its KV cache kept across rounds."""

    def __init__(
        self, generator: HFGenerator, messages: Sequence[Message], *, prefix: str = "", tools: ToolSpec | None = None
    ) -> None:
        from ensemblehub_core._torch import KeptCache

        self.gen = generator
        prompt = generator.encode_prompt(messages, tools)
        self.prompt_tokens = len(prompt)
        self.ids: list[int] = prompt + generator.encode(prefix)
        self.kv = KeptCache(generator.model, generator.compiled)  # the leading positions of ids (+ a proposal)
        self.proposal: _Proposal | None = None
        self.forwarded_tokens = 0  # tokens run through the model: the work this session did

    async def generate(self, request: SegmentRequest) -> Candidate:
        return await asyncio.to_thread(self._generate, request)

    def _generate(self, request: SegmentRequest) -> Candidate:
        from ensemblehub_core._torch import device_lock

        if self.proposal is not None:  # a proposal nobody accepted: forget it
            self._drop_proposal()
        try:
            with device_lock(str(self.gen.model.device)):
                return self._decode(request)
        except InputError:
            raise
        except Exception as exc:
            raise GeneratorError(self.gen.name, f"{type(exc).__name__}: {exc}") from exc

    def _decode(self, request: SegmentRequest) -> Candidate:
        """Decode one candidate after the session's ids; its tokens stay in the cache as a proposal.

        Tokens are chosen on the device. On an accelerator the forward pass of each token is queued before the
        token is read back, so the host checks EOS and stop strings while the device computes the next step; the
        one step queued past the end is rolled back.
        """
        from ensemblehub_core._torch import ChosenLogprobs, HostRead, pick_tokens, reads_ahead, seeded_generator

        start = time.perf_counter()
        budget = min(request.max_new_tokens, self.gen.context_length - len(self.ids))
        if budget <= 0:
            raise InputError(
                f"member '{self.gen.name}': no room left in its context of {self.gen.context_length} tokens"
            )
        self.kv.reserve(len(self.ids) + budget)
        if self.kv.cached >= len(self.ids):  # all cached: re-run the last token to get its logits
            self.kv.rollback(self.kv.cached - len(self.ids) + 1)
        pending = self.ids[self.kv.cached :]
        logits = self.kv.forward(pending)
        self.forwarded_tokens += len(pending)
        ahead = reads_ahead(logits.device)
        gen = seeded_generator(request.seed, logits.device)
        answer = AnswerText(self.gen.decode)
        new = answer.ids
        chosen = ChosenLogprobs()
        fed, finish, text = 0, "length", ""
        ends = [*request.stop, *self.gen.end_strings] if request.on_text is not None else []
        for step in range(budget):
            tok = pick_tokens(logits, request.temperature, request.top_p, gen)
            chosen.add(logits, tok)
            read = HostRead(tok)
            last = step == budget - 1
            if ahead and not last:
                logits = self.kv.forward(tok)
                fed += 1
            tok_id = int(read.tolist())
            done, finish, text = self.gen._advance(answer, tok_id, request)
            if done or last:
                if ahead and not last:  # the step queued after the final token is not part of the candidate
                    self.forwarded_tokens += 1
                    self.kv.rollback(1)
                    fed -= 1
                break
            if request.on_text is not None:
                request.on_text(settled_text(text, ends))
            if not ahead:
                logits = self.kv.forward(tok)
                fed += 1
        self.forwarded_tokens += fed
        token_ids = [*new, tok_id] if finish == "eos" and tok_id in self.gen.eos_ids else list(new)
        cand = Candidate(
            member=self.gen.name,
            text=text,
            token_count=len(new) + (1 if finish == "eos" else 0),
            prompt_tokens=self.prompt_tokens,
            finish_reason=finish,  # type: ignore[arg-type]
            elapsed_s=time.perf_counter() - start,
            token_ids=token_ids,
            token_logprobs=chosen.values()[: len(token_ids)],
        )
        exact = text == self.gen.decode(new)
        self.proposal = _Proposal(ids=new, text=text, fed=fed, exact=exact, candidate=cand)
        return cand

    def accept(self, text: str, own: Candidate | None = None) -> None:
        prop = self.proposal
        if prop is not None and own is prop.candidate and prop.exact and text == prop.text:
            # Our own segment won: its tokens are already in the cache (all but the last one).
            self.proposal = None
            self.ids += prop.ids
            self.kv.trim()
            return
        self._drop_proposal()
        self.ids += self.gen.encode(text)

    def _drop_proposal(self) -> None:
        self.proposal = None
        self.kv.rollback(self.kv.cached - len(self.ids))

    def close(self) -> None:
        self.kv.reset()
        self.proposal = None


def build(cfg: MemberConfig, ctx: BuildContext) -> HFGenerator:
    """Build an `HFGenerator` from a member config, loading weights through the pool."""
    from ensemblehub_core.models import ModelSpec

    if not cfg.model:
        raise ConfigError(f"member '{cfg.name}': backend 'hf' needs 'model' (e.g. embedded:smollm2-135m-instruct)")
    spec = ModelSpec(source=cfg.model, dtype=cfg.dtype, device=cfg.device,
                     gguf_file=cfg.options.get("gguf_file"),
                     trust_remote_code=bool(cfg.options.get("trust_remote_code", False)))
    max_len = cfg.options.get("compile_max_len")
    return HFGenerator(cfg.name, ctx.pool.get(spec), prompt_format=cfg.prompt_format,
                       system_prompt=cfg.system_prompt, end_strings=cfg.options.get("end_strings", ()),
                       compile=bool(cfg.options.get("compile", False)),
                       compile_max_len=int(max_len) if max_len else None)
