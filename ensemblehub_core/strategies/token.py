"""Token-level ensembles across members with different tokenizers: GaC and UniTE.

Each step every member gives its next-token distribution for the answer so far (in its own prompt format and
tokenization), the strategy combines them into one choice of *text* (a token's bytes, or end-of-sequence), and
that text is fed back to every member (`TokenSession.append`), which keeps its KV cache and re-tokenizes only
the tail when the text came from another tokenizer.

``gac`` (Generation as Classification): every member's full distribution is mapped onto the union vocabulary
(`vocab.union_vocab`, built once per member set) and the weighted sum is taken; argmax, or sampling with the
request's temperature / top_p.

``unite``: only the union of each member's top-k tokens is considered; each member's logit for every union
token is looked up in its own vocabulary (its first token for text it spells with several), softmaxed per
member over the union, and the weighted average is taken. Members that return only top-k log-probabilities
work here.

Both: end-of-sequence of any member ends the answer for all; stop strings (and members' ``end_strings``) apply
to the shared text. Optional key-token gating: when the primary member's top token has probability at least
``gate_threshold``, it is taken without asking the others that step; their caches catch up on the text the
next time they are asked, in one forward pass.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import Field

from ensemblehub_core._torch import HostRead, pick_tokens, seeded_generator, take
from ensemblehub_core.exceptions import CapabilityError, ConfigError
from ensemblehub_core.generators.base import Generator
from ensemblehub_core.generators.tokens import Piece, TokenSession, ranked_pieces, text_only_message
from ensemblehub_core.scorers.base import ScoringPanel
from ensemblehub_core.strategies.base import RunContext, Strategy, open_token_session
from ensemblehub_core.strategies.params import StrategyParams
from ensemblehub_core.strategies.vocab import UnionVocab, union_vocab
from ensemblehub_core.types import Candidate, RoundTrace

__all__ = ["GaCStrategy", "TokenParams", "UniTEParams", "UniTEStrategy"]


class TokenParams(StrategyParams):
    """Parameters shared by the token-level strategies.

    Attributes:
        weights: Member name → weight (default 1 each; normalised to sum 1).
        gate_threshold: Key-token gating: when the primary member's top probability is at least this, its
            token is taken without running the other members (None: always ask everyone).
        primary: The member gating listens to (default: the first member).
    """

    weights: dict[str, float] = Field(default_factory=dict)
    gate_threshold: float | None = Field(default=None, gt=0, le=1)
    primary: str | None = None


class UniTEParams(TokenParams):
    """UniTE's parameters.

    Attributes:
        top_k: How many of each member's likeliest tokens enter the union.
    """

    top_k: int = Field(default=10, gt=0, le=200)


@dataclass(kw_only=True)
class _Choice:
    """One step's decision and what each member asked thought of it."""

    piece: Piece
    own: dict[str, int] = field(default_factory=dict)  # member → its own token id for ``piece``
    probs: dict[str, float] = field(default_factory=dict)  # member → its probability of ``piece``
    tops: dict[str, Piece] = field(default_factory=dict)  # member → its own likeliest piece
    gated: bool = False


@dataclass(kw_only=True)
class _Run:
    """State of one token-level run."""

    sessions: dict[str, TokenSession]
    weights: dict[str, float]
    primary: str
    temperature: float
    top_p: float
    seed: int | None
    rng: torch.Generator | None = None  # made on the device the combined distribution lives on, at first use
    union: UnionVocab | None = None


@dataclass(kw_only=True)
class _Clock:
    """Step timing; the first step is kept apart because it includes every member's prompt prefill."""

    steps: int = 0
    gated: int = 0
    first_s: float = 0.0
    decode_s: float = 0.0  # all later steps
    forward_s: float = 0.0  # of which in the members' forward passes

    def add(self, index: int, elapsed: float, forward: float, gated: bool) -> None:
        self.steps += 1
        self.gated += gated
        if index == 0:
            self.first_s = elapsed
        else:
            self.decode_s += elapsed
            self.forward_s += forward

    def facts(self) -> dict[str, Any]:
        later = max(1, self.steps - 1)
        return {
            "steps": self.steps,
            "gated_steps": self.gated,
            "first_step_s": round(self.first_s, 4),
            "decode_step_s": round(self.decode_s / later, 5),
            "overhead_step_s": round((self.decode_s - self.forward_s) / later, 5),
        }


def _forward_s(run: _Run) -> float:
    return sum(s.forward_s for s in run.sessions.values())


class _AnswerText:
    """The shared answer: bytes in, text out, stop strings cut it, text that may start one is held back."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.emitted = 0
        self.stopped_at: int | None = None

    def add(self, piece: bytes) -> bool:
        """Append a piece; True when a stop string now ends the answer."""
        before = len(self.text)
        self.text += self._decoder.decode(piece)
        if not self.stops:
            return False
        lo = max(0, before - max(len(s) for s in self.stops))
        hits = [i for i in (self.text.find(s, lo) for s in self.stops) if i != -1]
        if hits:
            self.stopped_at = min(hits)
        return bool(hits)

    def take(self, final: bool) -> str:
        """The text that can be shown now (all of it when ``final``)."""
        end = len(self.text) if self.stopped_at is None else self.stopped_at
        if not final and self.stopped_at is None:
            end -= self._held_back()
        out = self.text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out

    def _held_back(self) -> int:
        longest = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:k]):
                    longest = k
                    break
        return longest


def _show(piece: Piece) -> str:
    return "<eos>" if piece is None else piece.decode("utf-8", errors="replace")


class _TokenStrategy(Strategy):
    """The shared loop of `GaCStrategy` and `UniTEStrategy`; subclasses implement `choose`."""

    params: TokenParams
    #: Needs every member's full distribution (False: top-k log-probabilities are enough).
    needs_full: ClassVar[bool] = True

    def check(self, members: Mapping[str, Generator], panel: ScoringPanel | None) -> None:
        for name, gen in members.items():
            full = gen.supports_distributions
            if self.needs_full and not full:
                topk = gen.supports_top_logprobs
                hint = " (it returns top-k log-probabilities only: strategy 'unite' can use it)" if topk else ""
                hint = hint or gen.token_level_hint
                raise CapabilityError(text_only_message(name, type(gen).__name__, self.name) + hint)
            if not full and not gen.supports_top_logprobs:
                raise CapabilityError(text_only_message(name, type(gen).__name__, self.name) + gen.token_level_hint)
        unknown = sorted(set(self.params.weights) - set(members))
        if unknown:
            raise ConfigError(
                f"strategy '{self.name}': weights name unknown member(s) {', '.join(unknown)}; "
                f"members: {', '.join(members)}"
            )
        if self.params.primary is not None and self.params.primary not in members:
            raise ConfigError(
                f"strategy '{self.name}': primary '{self.params.primary}' is not a member; "
                f"members: {', '.join(members)}"
            )

    def prepare(self, run: _Run) -> dict[str, Any]:
        """Build what the combination needs (runs in a worker thread); returns facts for the trace."""
        return {}

    def choose(self, run: _Run, logits: dict[str, torch.Tensor | None]) -> _Choice:
        """Combine the members' views into one choice (``logits`` is None for top-k members)."""
        raise NotImplementedError

    # -- the loop -------------------------------------------------------------------------------------------
    async def run(self, ctx: RunContext) -> AsyncIterator[RoundTrace]:
        run = await asyncio.to_thread(self._open, ctx)
        answer = _AnswerText(list(ctx.params.stop) + _end_strings(ctx.members))
        clock = _Clock()
        ctx.finish_reason = "length"
        ctx.prompt_tokens = next(iter(run.sessions.values())).prompt_tokens
        try:
            facts = await asyncio.to_thread(self.prepare, run)
            for index in range(ctx.params.max_tokens):
                if min(s.room() for s in run.sessions.values()) <= 1:
                    break
                started, forwarded = time.perf_counter(), _forward_s(run)
                choice = await asyncio.to_thread(self._step, run)
                finished = choice.piece is None
                if choice.piece is not None:
                    for name, session in run.sessions.items():
                        session.append(choice.piece, choice.own.get(name))
                    finished = answer.add(choice.piece)
                elapsed = time.perf_counter() - started
                clock.add(index, elapsed, _forward_s(run) - forwarded, choice.gated)
                last = finished or index == ctx.params.max_tokens - 1
                yield self._trace(index, choice, run, answer.take(final=last), elapsed)
                if finished:
                    ctx.finish_reason = "stop"
                    break
            rest = answer.take(final=True)
            if rest:  # text held back for a stop string that never came (the context ran out)
                yield RoundTrace(
                    index=clock.steps, candidates=[], accepted_text=rest, note="flushed held-back text"
                )
            ctx.extra["token_level"] = {
                **facts,
                **clock.facts(),
                "members": {name: s.stats() for name, s in run.sessions.items()},
            }
        finally:
            for session in run.sessions.values():
                session.close()

    def _open(self, ctx: RunContext) -> _Run:
        sessions = {name: open_token_session(gen, ctx) for name, gen in ctx.members.items()}
        for name, s in sessions.items():
            if self.needs_full and not s.full_distribution:
                raise CapabilityError(text_only_message(name, type(ctx.members[name]).__name__, self.name))
        raw = {name: float(self.params.weights.get(name, 1.0)) for name in sessions}
        total = sum(raw.values()) or 1.0
        primary = self.params.primary if self.params.primary in sessions else next(iter(sessions))
        return _Run(
            sessions=sessions,
            weights={name: w / total for name, w in raw.items()},
            primary=primary,
            temperature=ctx.params.temperature,
            top_p=ctx.params.top_p,
            seed=ctx.params.seed,
        )

    def _step(self, run: _Run) -> _Choice:
        logits: dict[str, torch.Tensor | None] = {}
        if self.params.gate_threshold is not None and len(run.sessions) > 1:
            session = run.sessions[run.primary]
            if session.full_distribution:
                first = logits[run.primary] = session.next_logits()
                gate = _gate(session, first, self.params.gate_threshold)
                if gate is not None:
                    return gate
        for name, session in run.sessions.items():
            if name not in logits:
                logits[name] = session.next_logits() if session.full_distribution else None
        return self.choose(run, logits)

    def _pick(self, run: _Run, probs: torch.Tensor) -> torch.Tensor:
        """The chosen index of ``probs``, on its device (read it back together with whatever else is needed)."""
        if run.temperature <= 0:
            return torch.argmax(probs)
        if run.rng is None and run.seed is not None:
            run.rng = seeded_generator(run.seed, probs.device)
        return pick_tokens(torch.log(probs), run.temperature, run.top_p, run.rng)

    def _trace(self, index: int, choice: _Choice, run: _Run, text: str, elapsed: float) -> RoundTrace:
        names = list(choice.probs)
        cands = [
            Candidate(
                member=n,
                text=_show(choice.tops.get(n)),
                token_count=1,
                prompt_tokens=run.sessions[n].prompt_tokens,
                finish_reason="eos" if choice.tops.get(n, b"") is None else "length",
            )
            for n in names
        ]
        winner = next((n for n in names if choice.tops.get(n, b"") == choice.piece), None)
        return RoundTrace(
            index=index,
            candidates=cands,
            scores=[choice.probs[n] for n in names],
            winner=winner,
            winner_index=names.index(winner) if winner is not None else None,
            accepted_text=text,
            accepted_tokens=1,
            generate_s=elapsed,
            note="gated" if choice.gated else "",
        )


def _end_strings(members: Mapping[str, Generator]) -> list[str]:
    """Members' own end markers (a few-shot base model's "\\nQuestion:") end the shared answer too."""
    out: list[str] = []
    for gen in members.values():
        out += [s for s in getattr(gen, "end_strings", []) if s and s not in out]
    return out


def _gate(session: TokenSession, logits: torch.Tensor, threshold: float) -> _Choice | None:
    """The primary member's top token when it is confident enough (and is text or EOS)."""
    probs = torch.softmax(logits, dim=-1)
    top_p, top_id = torch.max(probs, dim=-1)
    # One read for both: a token id is exact in float64.
    p, t = HostRead(torch.stack([top_p.double(), top_id.double()])).tolist()
    vocab = session.vocab()
    tid = int(t)
    piece = None if tid in vocab.eos_ids else vocab.piece(tid)
    if p < threshold or (piece is None and tid not in vocab.eos_ids):
        return None
    name = session.member
    return _Choice(piece=piece, own={name: tid}, probs={name: float(p)}, tops={name: piece}, gated=True)


class GaCStrategy(_TokenStrategy):
    """Generation as Classification: full distributions combined over the union vocabulary."""

    name: ClassVar[str] = "gac"
    Params = TokenParams
    params: TokenParams

    def prepare(self, run: _Run) -> dict[str, Any]:
        vocabs = [s.vocab() for s in run.sessions.values()]
        run.union, cached = union_vocab(vocabs)
        return {
            "union_size": run.union.size,
            "union_build_s": round(run.union.build_s, 3),
            "union_cached": cached,
            "union_mb": round(run.union.nbytes / 2**20, 1),
        }

    def choose(self, run: _Run, logits: dict[str, torch.Tensor | None]) -> _Choice:
        union = run.union
        assert union is not None
        names = list(run.sessions)
        probs = {n: torch.softmax(_full(logits[n]), dim=-1) for n in names}
        total = union.combine([probs[n] for n in names], [run.weights[n] for n in names])
        device = total.device
        uid = self._pick(run, total)
        # Everything the trace needs, gathered on the device and read back at once: the chosen union id, then per
        # member its top id, that id's union id and the member's mass on the chosen union id.
        parts = [uid.double().reshape(1)]
        for m, n in enumerate(names):
            p = probs[n]
            top = torch.argmax(p)
            mapping = union.map_on(m, p.device)
            inside = top < mapping.shape[0]
            top_uid = torch.where(inside, take(mapping, top.clamp(max=mapping.shape[0] - 1)), union.sink)
            mass = take(union.member_union(m, p), uid)
            parts.append(torch.stack([top.double(), top_uid.double(), mass.double()]).to(device))
        read = HostRead(torch.cat(parts)).tolist()
        chosen = int(read[0])
        choice = _Choice(piece=union.pieces[chosen])
        for m, n in enumerate(names):
            own_id, own_uid = int(read[1 + 3 * m]), int(read[2 + 3 * m])
            choice.tops[n] = union.pieces[own_uid] if own_uid != union.sink else b""
            choice.probs[n] = float(read[3 + 3 * m])
            if own_uid == chosen:
                choice.own[n] = own_id
        return choice


class UniTEStrategy(_TokenStrategy):
    """UniTE: the union of each member's top-k, each member's own logits for it, averaged."""

    name: ClassVar[str] = "unite"
    Params = UniTEParams
    params: UniTEParams
    needs_full: ClassVar[bool] = False

    def choose(self, run: _Run, logits: dict[str, torch.Tensor | None]) -> _Choice:
        k = self.params.top_k
        tops = {n: self._top(run.sessions[n], logits[n], k) for n in run.sessions}
        pieces: list[Piece] = []
        for listed in tops.values():
            pieces += [p for p, _ in listed if p not in pieces]
        device = next((lg.device for lg in logits.values() if lg is not None), torch.device("cpu"))
        dists = {
            n: torch.softmax(self._union_logits(run.sessions[n], logits[n], tops[n], pieces), dim=-1).to(device)
            for n in run.sessions
        }
        total = sum(run.weights[n] * d for n, d in dists.items())
        assert isinstance(total, torch.Tensor)
        idx = self._pick(run, total)
        # One read: the chosen index, each member's probability of it and each full member's own top id.
        parts = [idx.double().reshape(1)]
        for n in run.sessions:
            lg = logits[n]
            top = torch.argmax(lg).to(device) if lg is not None else torch.tensor(-1, device=device)
            parts.append(torch.stack([take(dists[n], idx).double(), top.double()]))
        read = HostRead(torch.cat(parts)).tolist()
        chosen = int(read[0])
        choice = _Choice(piece=pieces[chosen])
        for i, n in enumerate(run.sessions):
            choice.probs[n] = float(read[1 + 2 * i])
            choice.tops[n] = tops[n][0][0] if tops[n] else b""
            if logits[n] is not None and choice.tops[n] == choice.piece and choice.piece is not None:
                choice.own[n] = int(read[2 + 2 * i])
        return choice

    @staticmethod
    def _top(session: TokenSession, logits: torch.Tensor | None, k: int) -> list[tuple[Piece, float]]:
        if logits is None:
            return session.top_logprobs(k)
        values, ids = torch.topk(logits, min(k + 8, logits.shape[0]))  # spare slots for control tokens
        both = HostRead(torch.stack([ids.double(), values.double()])).tolist()  # one read for ids and values
        return ranked_pieces(zip([int(i) for i in both[0]], both[1], strict=True), session.vocab(), k)

    @staticmethod
    def _union_logits(
        session: TokenSession,
        logits: torch.Tensor | None,
        listed: list[tuple[Piece, float]],
        pieces: list[Piece],
    ) -> torch.Tensor:
        """This member's score for every union piece: its own logit (top-k members: listed log-prob).

        Full members: the ids are looked up on the host, the logits gathered on the device in one go.
        """
        if logits is None:
            known = dict(listed)
            floor = min(known.values()) if known else 0.0  # unlisted: at most as likely as its last listed
            return torch.tensor([known.get(p, floor) for p in pieces], dtype=torch.float32)
        ids: list[int] = []
        for piece in pieces:
            tid = session.piece_id(piece) if piece is not None else None
            ids.append(-1 if tid is None else tid)
        dev = logits.device
        index = torch.tensor(ids, dtype=torch.long).to(dev, non_blocking=True)
        out = torch.where(index >= 0, logits[index.clamp(min=0)], float("-inf"))
        if None in pieces:
            eos = sorted(session.vocab().eos_ids)
            at = pieces.index(None)
            out[at] = torch.logsumexp(logits[eos], dim=0) if eos else float("-inf")
        return out


def _full(logits: torch.Tensor | None) -> torch.Tensor:
    if logits is None:
        raise CapabilityError("strategy 'gac' needs every member's full next-token distribution")
    return logits
