"""Response-level ensembles: every member writes a full answer, then one is picked, voted, ranked or fused.

``best_of_n``: the scorer panel picks the best answer.
``vote``: self-consistency: final answers are extracted (`ensemblehub_core.answers`), normalised and counted
(optionally weighted by score); the winning answer's best full text is returned with the vote table.
``rank``: pairwise ranking with a judge member or the scorer panel (`ranking`), ``full`` or ``bubble``.
``fuse``: Mixture-of-Agents: proposers answer (``layers`` rounds, each seeing the previous round's answers),
then an aggregator member writes a new answer from the numbered candidates, optionally only the top-k of a
ranking.

Each yields one round: its candidates are every answer written, its accepted text the final answer, and
``ctx.extra`` holds the vote table / ranking / layers. With ``samples_per_member`` > 1 each member answers
several times (the first sample at the request's temperature, the others sampled at ``sample_temperature``
when the request is greedy); candidates are labelled ``member#k`` then.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field

from ensemblehub_core.answers import Extractor, answer_key, get_extractor, with_tools
from ensemblehub_core.exceptions import AllMembersFailed, ConfigError
from ensemblehub_core.generators.base import Generator, SegmentRequest
from ensemblehub_core.scorers.base import ScoreRequest, ScoringPanel, best_index
from ensemblehub_core.strategies.base import (
    RunContext,
    Strategy,
    gather_candidates,
    now,
    open_session,
)
from ensemblehub_core.strategies.params import StrategyParams
from ensemblehub_core.strategies.ranking import (
    DEFAULT_PAIR_TEMPLATE,
    MemberJudge,
    PairJudge,
    PanelJudge,
    Ranking,
    RankMode,
    rank_candidates,
)
from ensemblehub_core.types import Candidate, Message, RoundTrace

__all__ = [
    "Answers",
    "BestOfNStrategy",
    "FuseParams",
    "FuseStrategy",
    "RankParams",
    "RankStrategy",
    "ResponseParams",
    "VoteParams",
    "VoteStrategy",
    "collect_answers",
]

DEFAULT_FUSE_TEMPLATE = (
    "You have been given several candidate responses to the user's latest question. "
    "Synthesize them into one single, high-quality response. Some candidates may be wrong or biased: "
    "evaluate them critically instead of copying them, and do not mention that there were several "
    "candidates.\n\n"
    "Candidate responses:\n{responses}"
)


class ResponseParams(StrategyParams):
    """Parameters shared by the response-level strategies.

    Attributes:
        samples_per_member: Full answers each member writes.
        sample_temperature: Temperature of the extra samples when the request itself is greedy.
        proposers: The members that answer (default: all).
    """

    samples_per_member: int = Field(default=1, ge=1, le=32)
    sample_temperature: float = Field(default=0.7, ge=0)
    proposers: list[str] | None = None


@dataclass(kw_only=True)
class Answers:
    """The full answers of one round, their labels, the failures and timing."""

    candidates: list[Candidate]
    labels: list[str]
    errors: dict[str, str] = field(default_factory=dict)
    generate_s: float = 0.0


async def collect_answers(
    ctx: RunContext,
    members: Mapping[str, Generator],
    *,
    samples: int = 1,
    sample_temperature: float = 0.7,
    messages: Sequence[Message] | None = None,
) -> Answers:
    """Every member writes ``samples`` full answers, concurrently, under the run's member policy.

    Raises:
        AllMembersFailed: no member produced an answer.
    """
    p = ctx.params
    started = now()

    async def one_sample(k: int) -> tuple[list[Candidate], dict[str, str]]:
        greedy = p.temperature <= 0
        request = SegmentRequest.for_answer(p, temperature=sample_temperature if (k > 0 and greedy) else None,
                                            seed_offset=k)
        sessions = {
            (n if samples == 1 else f"{n}#{k + 1}"): open_session(g, ctx, messages)
            for n, g in members.items()
        }
        try:
            return await gather_candidates(sessions, request, ctx.policy, ctx.breaker)
        except AllMembersFailed as exc:
            return [], exc.errors
        finally:
            for session in sessions.values():
                session.close()

    results = await asyncio.gather(*(one_sample(k) for k in range(samples)))
    answers = Answers(candidates=[], labels=[], generate_s=0.0)
    for k, (cands, errors) in enumerate(results):
        answers.candidates += cands
        answers.labels += [c.member if samples == 1 else f"{c.member}#{k + 1}" for c in cands]
        answers.errors.update(errors)
    if not answers.candidates:
        raise AllMembersFailed(answers.errors)
    answers.generate_s = now() - started
    return answers


def _member(ctx: RunContext, name: str, role: str, strategy: str) -> Generator:
    """A member by name for a role (judge, aggregator), also when a selection step left it out."""
    pool = {**ctx.all_members, **ctx.members}
    if name not in pool:
        raise ConfigError(
            f"strategy '{strategy}': {role} '{name}' is not a member; members: {', '.join(pool)}"
        )
    return pool[name]


class _ResponseStrategy(Strategy):
    """Shared plumbing: which members propose, and a finished single-round trace."""

    params: ResponseParams

    def check(self, members: Mapping[str, Generator], panel: ScoringPanel | None) -> None:
        unknown = sorted(set(self.params.proposers or []) - set(members))
        if unknown:
            raise ConfigError(
                f"strategy '{self.name}': proposers name unknown member(s) {', '.join(unknown)}; "
                f"members: {', '.join(members)}"
            )

    def proposers(self, ctx: RunContext) -> dict[str, Generator]:
        chosen = self.params.proposers
        members = {n: g for n, g in ctx.members.items() if chosen is None or n in chosen}
        return members or dict(ctx.members)  # a selection step may have left none of the named ones

    async def answers(self, ctx: RunContext, messages: Sequence[Message] | None = None) -> Answers:
        return await collect_answers(
            ctx,
            self.proposers(ctx),
            samples=self.params.samples_per_member,
            sample_temperature=self.params.sample_temperature,
            messages=messages,
        )

    @staticmethod
    def finish(
        ctx: RunContext, answers: Answers, win: int, scores: list[float | None], **trace: Any
    ) -> RoundTrace:
        """Set the run's outcome from the winning candidate and build the one round."""
        cand = answers.candidates[win]
        ctx.finish_reason = cand.answer_finish
        ctx.prompt_tokens = ctx.prompt_tokens or cand.prompt_tokens
        return RoundTrace(
            index=0,
            candidates=answers.candidates,
            scores=scores,
            winner=cand.member,
            winner_index=win,
            accepted_text=cand.text,
            accepted_tokens=cand.token_count,
            generate_s=answers.generate_s,
            errors=answers.errors,
            **trace,
        )


async def _score(ctx: RunContext, cands: list[Candidate]) -> tuple[list[float | None], dict[str, Any], float]:
    """Panel scores of full answers (no panel: all None), the per-scorer scores, and the seconds it took."""
    if ctx.panel is None:
        return [None] * len(cands), {}, 0.0
    started = now()
    result = await ctx.panel.score(
        ScoreRequest(messages=ctx.messages, prefix=ctx.prefix, candidates=cands, tools=ctx.tools)
    )
    if result.notes:
        ctx.extra.setdefault("score_notes", []).extend(result.notes)
    return result.combined, result.by_scorer, now() - started


class BestOfNStrategy(_ResponseStrategy):
    """Every member writes a full answer; the scorer panel keeps the best."""

    name: ClassVar[str] = "best_of_n"
    Params = ResponseParams

    def check(self, members: Mapping[str, Generator], panel: ScoringPanel | None) -> None:
        super().check(members, panel)
        if panel is None and len(self.params.proposers or members) * self.params.samples_per_member > 1:
            raise ConfigError(
                f"strategy '{self.name}' picks among several answers and needs a scorer; add 'scorer:'"
            )

    async def run(self, ctx: RunContext) -> AsyncIterator[RoundTrace]:
        answers = await self.answers(ctx)
        scores, by_scorer, score_s = await _score(ctx, answers.candidates)
        win = best_index(scores) or 0
        ctx.extra["scores"] = dict(zip(answers.labels, scores, strict=True))
        yield self.finish(ctx, answers, win, scores, scorer_scores=by_scorer, score_s=score_s)


class VoteParams(ResponseParams):
    """Parameters of ``vote``.

    Attributes:
        extractor: ``auto``, ``boxed``, ``last_number``, ``choice``, ``exact``, ``module:function`` or a
            callable ``str -> str | None``.
        choices: The letters the ``choice`` extractor accepts.
        weighting: ``none`` (one vote each), ``score`` (a vote weighs its panel score, negatives count 0; for
            probability-like scorers such as judge) or ``exp_score`` (weighs exp(score); for log-probability
            scorers such as likelihood).
    """

    extractor: Any = "auto"
    choices: str = "ABCDE"
    weighting: Literal["none", "score", "exp_score"] = "none"


@dataclass(kw_only=True)
class _Tally:
    key: str
    answer: str
    count: int = 0
    weight: float = 0.0
    first: int = 0
    members: list[str] = field(default_factory=list)


class VoteStrategy(_ResponseStrategy):
    """Self-consistency / majority vote over extracted final answers."""

    name: ClassVar[str] = "vote"
    Params = VoteParams
    params: VoteParams

    def __init__(self, params: StrategyParams | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.extract: Extractor = get_extractor(self.params.extractor, self.params.choices)

    def check(self, members: Mapping[str, Generator], panel: ScoringPanel | None) -> None:
        super().check(members, panel)
        if self.params.weighting != "none" and panel is None:
            raise ConfigError(
                f"strategy 'vote' with weighting '{self.params.weighting}' needs a scorer; "
                "add 'scorer:' or use weighting: none"
            )

    async def run(self, ctx: RunContext) -> AsyncIterator[RoundTrace]:
        answers = await self.answers(ctx)
        cands = answers.candidates
        scores: list[float | None] = [None] * len(cands)
        by_scorer: dict[str, Any] = {}
        score_s = 0.0
        if self.params.weighting != "none" or len(cands) > 1:  # scores also pick the text of the winner
            scores, by_scorer, score_s = await _score(ctx, cands)
        extract = with_tools(self.extract, ctx.tools)
        extracted = [_extracted(extract, c.text) for c in cands]
        tallies = self.tally(extracted, scores, answers.labels)
        win, note = self._winner(tallies, extracted, scores)
        ctx.extra["votes"] = [
            {
                "answer": t.answer,
                "key": t.key,
                "count": t.count,
                "weight": round(t.weight, 4),
                "members": t.members,
            }
            for t in tallies
        ]
        ctx.extra["answers"] = dict(zip(answers.labels, extracted, strict=True))
        ctx.extra["winner_answer"] = tallies[0].answer if tallies else None
        yield self.finish(ctx, answers, win, scores, scorer_scores=by_scorer, score_s=score_s, note=note)

    def tally(
        self, extracted: list[str | None], scores: list[float | None], labels: list[str]
    ) -> list[_Tally]:
        """Votes per normalised answer, best first: weight, then count, then first appearance."""
        table: dict[str, _Tally] = {}
        for i, (answer, score) in enumerate(zip(extracted, scores, strict=True)):
            if answer is None:
                continue
            key = answer_key(answer)
            t = table.setdefault(key, _Tally(key=key, answer=answer, first=i))
            t.count += 1
            t.weight += self._weight(score)
            t.members.append(labels[i])
        return sorted(table.values(), key=lambda t: (-t.weight, -t.count, t.first))

    def _weight(self, score: float | None) -> float:
        if self.params.weighting == "none":
            return 1.0
        if score is None:
            return 0.0
        if self.params.weighting == "score":
            return max(0.0, score)
        return math.exp(min(score, 50.0))

    @staticmethod
    def _winner(
        tallies: list[_Tally], extracted: list[str | None], scores: list[float | None]
    ) -> tuple[int, str]:
        """The candidate to return: the best-scored (else first) answer with the winning final answer."""
        if not tallies:
            best = best_index(scores)
            return (best or 0), "no final answer could be extracted; kept the best-scored (or first) answer"
        key = tallies[0].key
        holders = [i for i, a in enumerate(extracted) if a is not None and answer_key(a) == key]
        scored = [i for i in holders if scores[i] is not None]
        win = max(scored, key=lambda i: (scores[i], -i)) if scored else holders[0]
        note = f"{tallies[0].count} of {len(extracted)} answers agree"
        if (
            len(tallies) > 1
            and tallies[1].weight == tallies[0].weight
            and tallies[1].count == tallies[0].count
        ):
            note += " (a tie, broken by first appearance)"
        return win, note


def _extracted(extract: Extractor, text: str) -> str | None:
    """One answer's final answer, stripped; None when it has none."""
    try:
        value = extract(text)
    except Exception:  # a user extractor that fails on one answer costs that answer its vote, not the run
        return None
    return None if value is None or not str(value).strip() else str(value).strip()


class RankParams(ResponseParams):
    """Parameters of ``rank``.

    Attributes:
        judge: The member that compares pairs (default: the scorer panel compares scores).
        mode: ``full`` (every pair) or ``bubble`` (one linear pass).
        swap: Ask an LLM judge about each pair in both orders and average (cancels position bias).
        template: The judge's prompt, with ``{question}``, ``{a}`` and ``{b}``.
    """

    judge: str | None = None
    mode: RankMode = "full"
    swap: bool = True
    template: str = DEFAULT_PAIR_TEMPLATE


class _RankingStrategy(_ResponseStrategy):
    """Shared by ``rank`` and ``fuse``: members named for roles, and answers ranked pairwise by the judge member
    or, without one, by the scorer panel."""

    params: RankParams | FuseParams

    def roles(self) -> dict[str, str | None]:
        """The member named for each role, in the order they are checked; None where a role is not used."""
        return {"judge": self.params.judge}

    def ranks(self) -> bool:
        """Whether answers are ranked, so that a judge member or a scorer is needed."""
        return True

    def check(self, members: Mapping[str, Generator], panel: ScoringPanel | None) -> None:
        super().check(members, panel)
        for role, name in self.roles().items():
            if name is not None and name not in members:
                raise ConfigError(
                    f"strategy '{self.name}': {role} '{name}' is not a member; members: {', '.join(members)}"
                )
        if self.ranks() and self.params.judge is None and panel is None:
            raise self._no_judge()

    async def rank(self, ctx: RunContext, answers: Answers) -> Ranking:
        """``answers`` ranked pairwise (see `rank_candidates`)."""
        p = self.params
        judge: PairJudge
        if p.judge is not None:
            judge = MemberJudge(_member(ctx, p.judge, "judge", self.name), template=p.template)
        elif ctx.panel is None:
            raise self._no_judge()
        else:
            judge = PanelJudge(ctx.panel, tools=ctx.tools)
        return await rank_candidates(
            judge, ctx.messages, answers.candidates, answers.labels, mode=p.mode, swap=p.swap
        )

    def _no_judge(self) -> ConfigError:
        return ConfigError(f"strategy '{self.name}' needs a judge member ('judge:') or a scorer ('scorer:')")


class RankStrategy(_RankingStrategy):
    """Pairwise ranking of full answers; the top one is returned with the ranking."""

    name: ClassVar[str] = "rank"
    Params = RankParams
    params: RankParams

    async def run(self, ctx: RunContext) -> AsyncIterator[RoundTrace]:
        answers = await self.answers(ctx)
        started = now()
        ranking = await self.rank(ctx, answers)
        ctx.extra["ranking"] = ranking.table(answers.labels)
        ctx.extra["comparisons"] = ranking.comparisons
        scores: list[float | None] = list(ranking.scores)
        yield self.finish(
            ctx,
            answers,
            ranking.order[0],
            scores,
            score_s=now() - started,
            note=f"{ranking.mode} ranking, {len(ranking.comparisons)} comparisons",
        )


class FuseParams(ResponseParams):
    """Parameters of ``fuse`` (Mixture-of-Agents).

    Attributes:
        aggregator: The member that writes the final answer (default: the first member).
        layers: Proposer rounds; from the second on, proposers see the previous round's answers.
        top_k: Pass only the best k answers of a round on, ranked by ``judge`` or the scorer panel.
        judge / mode / swap / template: The ranking used with ``top_k`` (see ``rank``).
        fuse_template: The aggregator's system prompt, with ``{responses}`` (the numbered candidates).
    """

    aggregator: str | None = None
    layers: int = Field(default=1, ge=1, le=4)
    top_k: int | None = Field(default=None, ge=1)
    judge: str | None = None
    mode: RankMode = "bubble"
    swap: bool = True
    template: str = DEFAULT_PAIR_TEMPLATE
    fuse_template: str = DEFAULT_FUSE_TEMPLATE


def with_references(messages: Sequence[Message], responses: Sequence[str], template: str) -> list[Message]:
    """The conversation with the numbered candidate responses added to (or as) its system message."""
    numbered = "\n\n".join(f"{i + 1}. {r.strip()}" for i, r in enumerate(responses))
    system = template.format(responses=numbered)
    msgs = list(messages)
    if msgs and msgs[0].role == "system":
        return [Message(role="system", content=f"{msgs[0].content}\n\n{system}"), *msgs[1:]]
    return [Message(role="system", content=system), *msgs]


class FuseStrategy(_RankingStrategy):
    """Mixture-of-Agents: proposers answer, an aggregator writes a new answer from their numbered answers."""

    name: ClassVar[str] = "fuse"
    Params = FuseParams
    params: FuseParams

    def roles(self) -> dict[str, str | None]:
        return {"aggregator": self.params.aggregator, "judge": self.params.judge if self.ranks() else None}

    def ranks(self) -> bool:
        return self.params.top_k is not None  # only a top-k cut ranks the proposers' answers

    async def run(self, ctx: RunContext) -> AsyncIterator[RoundTrace]:
        p = self.params
        all_cands: list[Candidate] = []
        labels: list[str] = []
        errors: dict[str, str] = {}
        layers: list[dict[str, Any]] = []
        refs: list[str] = []
        started = now()
        for layer in range(p.layers):
            msgs = ctx.messages if layer == 0 else with_references(ctx.messages, refs, p.fuse_template)
            answers = await self.answers(ctx, msgs)
            errors.update({f"L{layer + 1}:{k}": v for k, v in answers.errors.items()})
            refs, info = await self._references(ctx, answers)
            all_cands += answers.candidates
            labels += [f"L{layer + 1}:{label}" for label in answers.labels]
            layers.append(
                {"layer": layer + 1, "candidates": [f"L{layer + 1}:{x}" for x in answers.labels], **info}
            )
        name = p.aggregator or next(iter(ctx.all_members or ctx.members))
        aggregator = {name: _member(ctx, name, "aggregator", self.name)}
        final = await collect_answers(
            ctx, aggregator, messages=with_references(ctx.messages, refs, p.fuse_template)
        )
        fused = Answers(
            candidates=all_cands + final.candidates,
            labels=[*labels, f"aggregator:{name}"],
            errors={**errors, **final.errors},
            generate_s=now() - started,
        )
        ctx.prompt_tokens = final.candidates[0].prompt_tokens
        ctx.extra["layers"] = layers
        ctx.extra["aggregator"] = name
        win = len(fused.candidates) - 1
        yield self.finish(
            ctx,
            fused,
            win,
            [None] * len(fused.candidates),
            note=f"fused {len(refs)} candidates through {name}",
        )

    async def _references(self, ctx: RunContext, answers: Answers) -> tuple[list[str], dict[str, Any]]:
        """The answers passed on: all of them, or the top-k of a ranking."""
        texts = [c.text for c in answers.candidates]
        k = self.params.top_k
        if k is None or k >= len(texts):
            return texts, {}
        ranking = await self.rank(ctx, answers)
        kept = ranking.order[:k]
        return [texts[i] for i in kept], {
            "ranking": ranking.table(answers.labels),
            "kept": [answers.labels[i] for i in kept],
        }
