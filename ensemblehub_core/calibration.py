"""Calibrate an ensemble's scorers on a dev set (``ensemblehub calibrate``).

Each member answers every dev item alone (greedy); the ensemble's scorers rate the answers; each answer is marked
right or wrong against the item's reference answer. From these marks:

- ``confidence`` is calibrated per member: a logistic fit of "right" on the member's own confidence gives a
  slope and intercept, so each member's value becomes the log-odds that its answer is right, which compares
  across members that sound sure to different degrees;
- the panel's weights come from a logistic fit of "right" on every scorer's (calibrated) score.

Accuracy is reported on a held-out part of the dev file that the fits never saw: picking among the members'
answers with the panel as configured, then as calibrated (what ``best_of_n`` over these members does).

A ``choice`` ensemble (multiple choice from the members' option-letter probabilities) has no answers to pick
among: each member reads every dev question's options instead (`read_choices`), and the members' weights in the
log-linear pool are fitted to give the right options the highest likelihood (`fit_pool`), so a member whose
readings carry no signal gets little say.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemblehub_core.exceptions import ConfigError, GeneratorError, InputError
from ensemblehub_core.types import Candidate, Message

__all__ = ["CalibrationReport", "Reading", "Record", "apply", "collect", "fit", "fit_logistic", "fit_pool",
           "pool_accuracy", "pool_pick", "read_choices", "select_accuracy", "split"]


@dataclass(kw_only=True)
class Record:
    """One dev item: the members' answers, each scorer's scores of them, and which answers are right."""

    id: str
    candidates: list[Candidate]
    scores: dict[str, list[float | None]]
    correct: list[bool]


@dataclass(kw_only=True)
class CalibrationReport:
    """What `fit` found and how picking fares on the held-out items."""

    calibration: dict[str, tuple[float, float]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    fit_ids: list[str] = field(default_factory=list)
    heldout_ids: list[str] = field(default_factory=list)
    before: float = 0.0
    after: float = 0.0
    members_alone: dict[str, float] = field(default_factory=dict)
    pool_weights: dict[str, float] = field(default_factory=dict)


@dataclass(kw_only=True)
class Reading:
    """One multiple-choice dev item: each member's mean log-probability of every option, and the right option.

    A member whose reading failed is absent from ``members``.
    """

    id: str
    members: dict[str, list[float]]
    answer: int


def split(ids: Sequence[str], heldout: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Shuffle ids with ``seed`` and cut off a held-out share; both parts must be non-empty.

    Raises:
        InputError: a share outside (0, 1) or too few items for both parts.
    """
    if not 0 < heldout < 1:
        raise InputError(f"the held-out share must lie strictly between 0 and 1, got {heldout}: accuracy is never "
                         "reported on items the calibration was fitted on")
    order = list(ids)
    random.Random(seed).shuffle(order)
    cut = round(len(order) * heldout)
    if cut < 1 or cut >= len(order):
        raise InputError(f"{len(order)} dev items cannot be split into a fitting part and a held-out part of "
                         f"{heldout:.0%}; add items to the dev file")
    return order[cut:], order[:cut]


async def collect(
    members: dict[str, Any],
    panel: Any,
    items: Sequence[tuple[str, list[Message], str]],
    is_right: Callable[[str, str], bool],
    max_tokens: int,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 8,
) -> list[Record]:
    """Every member's greedy answer to every item, scored by the panel's scorers and marked right or wrong.

    Args:
        members: The ensemble's members by name.
        panel: Its `ScoringPanel` (None: no scorer; only the marks are kept).
        items: ``(id, messages, reference answer)``.
        is_right: ``(answer text, reference) -> bool``.
        max_tokens: Budget for each answer.
        progress: Called with (done, total) after each item.
        batch: Items each member answers together (`Generator.complete_many`): a transformers member decodes
            them in shared forward passes, several times faster on a CPU than one at a time, with the same
            greedy answers.
    """
    from ensemblehub_core.scorers.base import ScoreRequest

    if batch < 1:
        raise InputError(f"the batch size must be at least 1, got {batch}")
    records: list[Record] = []
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        answers = {name: await _answer_all(name, gen, [messages for _, messages, _ in chunk], max_tokens)
                   for name, gen in members.items()}
        for k, (item_id, messages, reference) in enumerate(chunk):
            cands = [answers[name][k] for name in members]
            scores: dict[str, list[float | None]] = {}
            if panel is not None:
                result = await panel.score(ScoreRequest(messages=messages, prefix="", candidates=cands))
                scores = result.by_scorer
            records.append(Record(id=item_id, candidates=cands, scores=scores,
                                  correct=[c.ok and is_right(c.text, reference) for c in cands]))
            if progress is not None:
                progress(len(records), len(items))
    return records


async def _answer_all(name: str, gen: Any, conversations: Sequence[list[Message]], max_tokens: int
                      ) -> list[Candidate]:
    """One member's greedy answers to several conversations, decoded together where the backend batches.

    When the batch fails (e.g. one prompt is too long for the context), each conversation is answered alone,
    so the failure costs only the answers that fail on their own.
    """
    from ensemblehub_core.generators.base import SegmentRequest

    request = SegmentRequest(max_new_tokens=max_tokens, temperature=0.0)
    if len(conversations) > 1:
        try:
            return list(await gen.complete_many([(m, "") for m in conversations], request))
        except Exception as exc:  # answered one at a time below, where each failure is recorded on its own
            logging.getLogger(__name__).info("member '%s' failed on a batch of %d dev items (%s); answering them "
                                             "one at a time", name, len(conversations), exc)
    out = []
    for messages in conversations:
        try:
            out.append(await gen.complete(messages, "", request))
        except Exception as exc:  # a failing member costs its answer, not the calibration
            out.append(Candidate(member=name, text="", finish_reason="error", error=str(exc)))
    return out


def fit_logistic(rows: Sequence[Sequence[float]], labels: Sequence[bool], l2: float = 1e-2,
                 steps: int = 50) -> list[float]:
    """Logistic regression by Newton's method: weights for each column, then the intercept.

    Small and dependency-free on purpose: a few features and a few hundred rows. ``l2`` keeps the fit finite
    when the classes separate (a member that is always right or always wrong).
    """
    import torch

    x = torch.tensor([[*r, 1.0] for r in rows], dtype=torch.float64)
    y = torch.tensor([float(v) for v in labels], dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64)
    reg = torch.eye(x.shape[1], dtype=torch.float64) * l2
    reg[-1, -1] = 0.0  # the intercept is not shrunk
    for _ in range(steps):
        p = torch.sigmoid(x @ w)
        grad = x.T @ (p - y) + reg @ w
        hess = x.T @ (x * (p * (1 - p))[:, None]) + reg + torch.eye(x.shape[1], dtype=torch.float64) * 1e-9
        step = torch.linalg.solve(hess, grad)
        w -= step
        if float(step.abs().max()) < 1e-8:
            break
    return [float(v) for v in w]


def _confidence(panel: Any) -> Any:
    """The panel's `ConfidenceScorer`, or None."""
    from ensemblehub_core.scorers.confidence import ConfidenceScorer

    for scorer, _ in panel.scorers if panel is not None else []:
        if isinstance(scorer, ConfidenceScorer):
            return scorer
    return None


def fit(records: Sequence[Record], panel: Any, members: Sequence[str]) -> CalibrationReport:
    """Per-member confidence calibration and panel weights from ``records`` (all of them are fitted on)."""
    report = CalibrationReport()
    conf = _confidence(panel)
    if conf is not None:
        for member in members:
            xs, ys = [], []
            for r in records:
                for c, ok in zip(r.candidates, r.correct, strict=True):
                    value = conf.raw(c) if c.member == member and c.ok else None
                    if value is not None:
                        xs.append([value])
                        ys.append(ok)
            if xs:
                # Strong shrinkage: a weak member is right on a handful of dev items, too few to trust a slope;
                # its intercept (how often it is right at all) is what the data can tell.
                slope, intercept = fit_logistic(xs, ys, l2=1.0)
                report.calibration[member] = (max(slope, 0.0), intercept)  # surer never means less likely right
    names = [s.name for s, _ in panel.scorers] if panel is not None else []
    rows: list[list[float]] = []
    labels: list[bool] = []
    for r in records:
        for row, ok in zip(_features(r, names, conf, report.calibration), r.correct, strict=True):
            if row is not None:
                rows.append(row)
                labels.append(ok)
    if names and rows:
        coef = fit_logistic(rows, labels)[:-1]
        # The panel is a weighted mean with positive weights; a scorer the fit finds useless gets a token weight.
        report.weights = {n: round(max(c, 1e-3), 6) for n, c in zip(names, coef, strict=True)}
    return report


def _features(record: Record, names: Sequence[str], conf: Any,
              calibration: dict[str, tuple[float, float]] | None) -> list[list[float] | None]:
    """Per candidate, every scorer's score (confidence under ``calibration``, None: the scorer's own); None when
    any is missing."""
    out: list[list[float] | None] = []
    for i, c in enumerate(record.candidates):
        row: list[float] = []
        for n in names:
            if conf is not None and n == conf.name:
                v = conf.calibrated(c, calibration)
            else:
                v = record.scores.get(n, [None] * len(record.candidates))[i]
            if v is None:
                break
            row.append(float(v))
        out.append(row if len(row) == len(names) and c.ok else None)
    return out


def select_accuracy(records: Sequence[Record], panel: Any, weights: dict[str, float] | None = None,
                    calibration: dict[str, tuple[float, float]] | None = None) -> float:
    """Share of records where the answer the weighted panel ranks first is right (ties: member order).

    ``calibration`` maps the confidence scorer's values; without it, the scorer's configured calibration does
    (the panel as configured).
    """
    if not records:
        return math.nan
    names = [s.name for s, _ in panel.scorers] if panel is not None else []
    use = weights or ({s.name: w for s, w in panel.scorers} if panel is not None else {})
    total = sum(use[n] for n in names) or 1.0
    conf = _confidence(panel)
    right = 0
    for r in records:
        feats = _features(r, names, conf, calibration) if names else [[] for _ in r.candidates]
        best, best_score = 0, -math.inf
        for i, row in enumerate(feats):
            if row is None:
                continue
            score = sum(use[n] * v for n, v in zip(names, row, strict=True)) / total
            if score > best_score:
                best, best_score = i, score
        right += r.correct[best]
    return right / len(records)


def read_choices(
    members: dict[str, Any],
    items: Sequence[tuple[str, list[Message], str]],
    shifts: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Reading], list[str]]:
    """Every member's reading (`read_options`) of every item whose last user message lists lettered options.

    Args:
        members: The ensemble's members by name.
        items: ``(id, messages, reference)``; the reference is the right option's letter (``B``, ``B. text``).
        shifts: Cyclic shifts per reading, as the strategy's ``shifts``.
        progress: Called with (done, total) after each item.

    Returns:
        The readings, and the ids of the items skipped because they list no options or their reference names
        none of the options.
    """
    from ensemblehub_core.answers import extract_choice
    from ensemblehub_core.strategies.choice import find_options, read_options

    readings, skipped = [], []
    for n, (item_id, messages, reference) in enumerate(items, 1):
        last_user = next((m for m in reversed(messages) if m.role == "user"), None)
        options = find_options(last_user.content) if last_user is not None else None
        letter = extract_choice(reference, options.letters) if options is not None else None
        if options is None or letter is None or letter not in options.letters:
            skipped.append(item_id)
            continue
        reads = {}
        for name, gen in members.items():
            try:
                reads[name], _ = read_options(gen, messages, options, shifts)
            except GeneratorError:  # a failing member is left out of this item, as the strategy leaves it out
                continue
        readings.append(Reading(id=item_id, members=reads, answer=options.letters.index(letter)))
        if progress is not None:
            progress(n, len(items))
    return readings, skipped


def pool_pick(reading: Reading, weights: Mapping[str, float]) -> int | None:
    """The option the weighted log-linear pool ranks first (ties: the earlier option); None when no member that
    read it has a weight."""
    used = {n: lp for n, lp in reading.members.items() if weights.get(n, 0.0) > 0}
    if not used:
        return None
    pooled = [sum(weights[n] * lp[o] for n, lp in used.items()) for o in range(len(next(iter(used.values()))))]
    return max(range(len(pooled)), key=lambda o: (pooled[o], -o))


def pool_accuracy(readings: Sequence[Reading], weights: Mapping[str, float]) -> float:
    """Share of readings where the pool under ``weights`` picks the right option."""
    if not readings:
        return math.nan
    return sum(pool_pick(r, weights) == r.answer for r in readings) / len(readings)


def fit_pool(readings: Sequence[Reading], members: Sequence[str], l2: float = 1.0) -> dict[str, float]:
    """Non-negative member weights of the log-linear pool that maximise the log-likelihood of the right options.

    The pooled score of option o is ``sum_m w_m * logp_m(o)``, and a softmax over the options turns it into the
    probability of each option: a conditional logit with one weight per member and no intercept (the option
    shifts already removed position preferences). ``l2`` shrinks the weights towards 0, so a member that only
    adds noise on a few dev items ends up with little weight rather than a large one fitted to that noise.
    """
    import torch

    if not readings:
        return {}
    raw = torch.full((len(members),), math.log(math.e - 1), dtype=torch.float64, requires_grad=True)  # w = 1
    optim = torch.optim.LBFGS([raw], max_iter=200, line_search_fn="strong_wolfe")
    tables = []
    for r in readings:
        x = torch.tensor([r.members.get(m, [0.0] * len(next(iter(r.members.values()), [0.0])))
                          for m in members], dtype=torch.float64)  # members x options; absent: no say
        tables.append((x, r.answer))

    def loss() -> torch.Tensor:
        optim.zero_grad()
        w = torch.nn.functional.softplus(raw)
        total = 0.5 * l2 * (w**2).sum()
        for x, answer in tables:
            total = total - torch.log_softmax(w @ x, dim=0)[answer]
        total.backward()
        return total

    optim.step(loss)
    w = torch.nn.functional.softplus(raw.detach())
    return {m: round(float(v), 6) for m, v in zip(members, w, strict=True)}


def apply(data: dict[str, Any], ensemble: str, report: CalibrationReport) -> dict[str, Any]:
    """A copy of a config document with the ensemble's confidence calibration and panel weights (or a ``choice``
    strategy's member weights) filled in."""
    out = copy.deepcopy(data)
    ens = out.get("ensembles", {}).get(ensemble)
    if ens is None:
        raise ConfigError(f"ensemble '{ensemble}' is not in the config")
    if report.pool_weights:
        strategy = ens.get("strategy")
        ens["strategy"] = strategy = {"name": strategy} if isinstance(strategy, str) else dict(strategy or {})
        strategy["weights"] = dict(report.pool_weights)
    scorers = ens.get("scorer") or []
    if isinstance(scorers, dict):
        scorers = [scorers]
    for s in scorers:
        name = s.get("name") or (f"{s['type']}:{s['member']}" if s.get("member") else s["type"])
        if s["type"] == "confidence" and report.calibration:
            s.setdefault("options", {})["calibration"] = {
                m: [round(a, 6), round(b, 6)] for m, (a, b) in report.calibration.items()
            }
        if name in report.weights:
            s["weight"] = report.weights[name]
    ens["scorer"] = scorers
    return out


def write_config(data: dict[str, Any], path: str | Path) -> None:
    """Write a config document as YAML."""
    import yaml

    Path(path).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
