"""Answer quality of each member alone and of the ensembles, paired on the same items (`make bench-quality`).

For every set the members answer a dev split and a separate test split (greedy); their answers, token
log-probabilities and the scorers' scores are kept per item in ``benchmarks/results/quality-records.jsonl``, so a
stopped run resumes. Calibration (`ensemblehub_core.calibration`) is fitted on the dev split only; every figure
is on the test split. Response-level selection among the members' answers is exactly what ``best_of_n`` over
these members does with greedy answers, so it is computed from the kept answers; the segment ensembles run for
real on the test items, their answers kept per item as well (under a fingerprint of the ensemble's config, so a
changed config answers afresh). Each member answers the records' items eight at a time, decoded together.
On multiple-choice sets every member also reads each item's options as the ``choice`` strategy does (kept per
item too), and ``choice`` is rated from those readings: each member alone, the pool with equal weights, and the
pool with the weights `ensemblehub calibrate` fits on the dev readings.

    python -m benchmarks.quality                         # every set, 100 dev + 100 test items each
    python -m benchmarks.quality --sets two_operand --test 60 --dev 40
    python -m benchmarks.quality --members qwen-0.5b,smollm2-135m,gemma3-270m,qwen-1.5b --sampler qwen-1.5b

Each system gets accuracy with a 95% Wilson interval and a paired comparison with the best member on the same
items: items won, items lost, and the exact McNemar p-value (two-sided binomial test on the discordant items).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.datasets import (
    Item,
    arithmetic,
    cissp,
    fcc_extra,
    gsm_symbolic,
    is_correct,
    medmcqa,
    mmlu,
    quartz,
    two_operand,
)
from ensemblehub_core import calibration as cal
from ensemblehub_core.config import HubConfig, ScorerConfig, load_config, parse_config
from ensemblehub_core.engine import Ensemble, to_messages
from ensemblehub_core.hub import Hub
from ensemblehub_core.scorers.agreement import AgreementScorer
from ensemblehub_core.scorers.base import ScoringPanel
from ensemblehub_core.scorers.confidence import ConfidenceScorer
from ensemblehub_core.scorers.cross_likelihood import CrossLikelihoodScorer
from ensemblehub_core.scorers.likelihood import LikelihoodScorer
from ensemblehub_core.types import Candidate

RESULTS = Path(__file__).parent / "results"

#: reasoning-gym seeds item i with seed + i, so seeds 42 and 43 give the same items shifted by one: the dev split
#: starts this far away to share none with the test split.
DEV_SEED = 10_042

#: set name -> (items for the test split, items for the dev split, answer token budget)
SETS: dict[str, tuple[Callable[[int], list[Item]], Callable[[int], list[Item]], int]] = {
    "two_operand": (lambda n: two_operand(n, seed=7), lambda n: two_operand(n, seed=8), 32),
    "mmlu": (lambda n: mmlu(n, seed=0), lambda n: mmlu(n, seed=1), 16),
    "basic_arithmetic": (lambda n: arithmetic(n, seed=42), lambda n: arithmetic(n, seed=DEV_SEED), 64),
    "gsm_symbolic": (lambda n: gsm_symbolic(n, seed=42), lambda n: gsm_symbolic(n, seed=DEV_SEED), 160),
    "quartz": (lambda n: quartz(n, seed=0), lambda n: quartz(n, seed=1), 16),
    "fcc_extra": (lambda n: fcc_extra(n, seed=0), lambda n: fcc_extra(n, seed=1), 16),
    "medmcqa": (lambda n: medmcqa(n, seed=0), lambda n: medmcqa(n, seed=1), 16),
    "cissp": (lambda n: cissp(n, seed=0), lambda n: cissp(n, seed=1), 16),
}
MIXED = ("mmlu", "two_operand")  # facts and arithmetic: members' strengths differ (this order)
MEMBERS = ("qwen-0.5b", "smollm2-135m", "gemma3-270m")
#: Members beyond the trio's that ``--members`` can name (the optional Qwen2.5-Coder-1.5B: `make model-qwen-1.5b`).
EXTRA_MEMBERS = {"qwen-1.5b": "embedded:qwen2.5-coder-1.5b-instruct"}
REAL = ("duo", "trio")  # segment ensembles of the packaged config, run for real on the test items
#: ``--real`` name of the segment ensemble built per set: the rated members (``--members``), the trio's segment
#: strategy, each step picked by its writer's confidence calibrated on that set's dev split.
SEGMENT_FITTED = "segment-calibrated"


def with_members(cfg: HubConfig, extra: tuple[str, ...], sampler: str) -> HubConfig:
    """The config with more ensembles: ``members``, the trio's members and those named in ``extra`` (keys of
    `EXTRA_MEMBERS`); ``sampled``, ``vote-qwen-x5``'s self-consistency over the member ``sampler``."""
    data = cfg.model_dump(exclude_none=True)
    pool = [*data["ensembles"]["trio"]["members"], *({"name": n, "model": m} for n, m in EXTRA_MEMBERS.items())]
    chosen = [m for m in pool if m["name"] in (*MEMBERS, *extra)]
    alone = [m for m in pool if m["name"] == sampler]
    data["ensembles"]["members"] = {"members": chosen, "strategy": "vote"}
    data["ensembles"]["sampled"] = {**data["ensembles"]["vote-qwen-x5"], "members": alone}
    return parse_config(data, cfg.source)


def segment_fitted(hub: Hub, names: tuple[str, ...], calibration: dict[str, tuple[float, float]]) -> Ensemble:
    """The trio's segment strategy over the rated members ``names`` with the confidence scorer calibrated on a dev
    split: what `ensemblehub calibrate` writes for a segment ensemble of these members."""
    trio, pooled = hub.config.ensembles["trio"], hub.config.ensembles["members"]
    cfg = trio.model_copy(update={
        "members": [m for m in pooled.members if m.name in names],
        "scorer": [ScorerConfig(type="confidence", options={"calibration": {
            m: list(ab) for m, ab in calibration.items()}})],
        "description": "segments over the rated members, confidence calibrated on the dev split"})
    return hub.build(cfg, name=SEGMENT_FITTED)


def with_dtype(cfg: HubConfig, dtype: str) -> HubConfig:
    """The config with every member (and scorer) loaded in ``dtype``; greedy answers are compared in one dtype."""
    data = cfg.model_dump(exclude_none=True)
    for ens in data["ensembles"].values():
        for m in ens["members"]:
            m["dtype"] = dtype
        for s in ens.get("scorer", []):
            s["dtype"] = dtype
    return parse_config(data, cfg.source)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))  # rounding can leave -0.0 at k = 0


def mcnemar_exact(won: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of ``won`` among the discordant items at 1/2."""
    n = won + lost
    if n == 0:
        return 1.0
    k = min(won, lost)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def _record_to_json(r: cal.Record) -> dict[str, Any]:
    return {"scores": r.scores, "correct": r.correct,
            "candidates": [{"member": c.member, "text": c.text, "finish_reason": c.finish_reason,
                            "token_count": c.token_count, "token_logprobs": c.token_logprobs, "error": c.error}
                           for c in r.candidates]}


def _record_from_json(row: dict[str, Any]) -> cal.Record:
    cands = [Candidate(member=c["member"], text=c["text"], finish_reason=c["finish_reason"],
                       token_count=c["token_count"], token_logprobs=c["token_logprobs"], error=c["error"])
             for c in row["candidates"]]
    return cal.Record(id=row["id"], candidates=cands, scores=row["scores"], correct=row["correct"])


def _read_store(store: Path) -> list[dict[str, Any]]:
    """The kept records; a line a stopped run left half written is skipped (its item is answered again)."""
    rows = []
    for line in store.read_text(encoding="utf-8").splitlines() if store.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


T = TypeVar("T")


def kept_per_item(store: Path, set_name: str, split: str, items: list[Item], make: Callable[[list[Item]], list[T]],
                  to_json: Callable[[T], dict[str, Any]], from_json: Callable[[dict[str, Any]], T],
                  chunk: int = 1) -> list[T]:
    """Each item's result kept in ``store`` under this set and split (a records, samples or readings split),
    making only the missing ones, ``chunk`` items at a time (``make`` gets a list, returns one result per item)
    and appended at once, so a stopped run keeps what it did."""
    kept = {row["id"]: from_json(row) for row in _read_store(store)
            if row["set"] == set_name and row["split"] == split}
    todo = [it for it in items if it.id not in kept]
    if todo and store.exists() and store.stat().st_size:
        with store.open("rb+") as f:  # end a line a stop left half written, so the next row starts a line
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        for it, result in zip(part, make(part), strict=True):
            kept[it.id] = result
            with store.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"set": set_name, "split": split, "id": it.id, **to_json(result)}) + "\n")
        print(f"\r  {set_name} {split}: {start + len(part)}/{len(todo)}", end="", flush=True)
    if todo:
        print()
    return [kept[it.id] for it in items]


def one_at_a_time(make: Callable[[Item], T]) -> Callable[[list[Item]], list[T]]:
    """`kept_per_item`'s ``make`` from a function of one item."""
    return lambda part: [make(it) for it in part]


def panel_of(members: dict[str, Any], extractor: str = "auto") -> ScoringPanel:
    """The scorers every selection rule draws on: confidence, answer agreement and the committee's likelihood."""
    committee = [LikelihoodScorer(f"likelihood:{n}", g, member=n) for n, g in members.items()]
    return ScoringPanel([(ConfidenceScorer("confidence"), 1.0),
                         (AgreementScorer("agreement", similarity="answer", extractor=extractor), 1.0),
                         (CrossLikelihoodScorer("cross_likelihood", committee), 1.0)])


def records_for(store: Path, set_name: str, split: str, items: list[Item], members: dict[str, Any],
                panel: ScoringPanel, max_tokens: int, batch: int = 8) -> list[cal.Record]:
    """The kept records of these items, answering and scoring only the ones not kept yet (``batch`` items at a
    time: each member decodes them together, as `ensemblehub calibrate` does)."""
    by_id = {it.id: it for it in items}

    def right(text: str, item_id: str) -> bool:  # the "reference" handed to collect is the item's id
        return is_correct(by_id[item_id], text)

    def answer(part: list[Item]) -> list[cal.Record]:
        return asyncio.run(cal.collect(members, panel, [(it.id, to_messages(it.prompt), it.id) for it in part],
                                       right, max_tokens, batch=batch))

    return kept_per_item(store, set_name, split, items, answer, _record_to_json, _record_from_json, chunk=batch)


def readings_for(store: Path, set_name: str, split: str, items: list[Item], members: dict[str, Any]
                 ) -> list[cal.Reading]:
    """Every member's reading of every multiple-choice item (what the ``choice`` strategy reads: each option's
    mean letter log-probability over all cyclic shifts), kept per item like the records (split suffixed
    ``-choice``) so a stopped run resumes."""

    def read(item: Item) -> cal.Reading:
        readings, skipped = cal.read_choices(members, [(item.id, to_messages(item.prompt), item.answer)])
        if skipped:
            raise SystemExit(f"{set_name} item {item.id} lists no lettered options the choice strategy can read")
        return readings[0]

    return kept_per_item(store, set_name, f"{split}-choice", items, one_at_a_time(read),
                         lambda r: {"members": r.members, "answer": r.answer},
                         lambda row: cal.Reading(id=row["id"], members=row["members"], answer=row["answer"]))


def choice_systems(test: list[cal.Reading], dev: list[cal.Reading], names: tuple[str, ...],
                   rest: dict[str, list[int]] | None = None, otherwise: str = ""
                   ) -> tuple[dict[str, list[int]], dict[str, float]]:
    """Marks of the ``choice`` strategy over these members: each member's reading alone, the pool with equal
    weights (the strategy's default) and with weights fitted on the dev readings (`ensemblehub calibrate`).
    ``rest`` holds each member's marks on items after ``test`` that list no options, which the strategy hands
    on: a member alone answers them itself, the pool's ``otherwise`` member answers them for the pool."""
    fitted = cal.fit_pool(dev, list(names))

    def marks(weights: dict[str, float], answering: str) -> list[int]:
        return [int(cal.pool_pick(r, weights) == r.answer) for r in test] + (rest or {}).get(answering, [])

    systems = {f"choice: {m} alone": marks({m: 1.0}, m) for m in names}
    systems["choice: pool, equal weights"] = marks(dict.fromkeys(names, 1.0), otherwise)
    systems["choice: pool, weights fitted on dev"] = marks(fitted, otherwise)
    return systems, fitted


def samples_for(store: Path, set_name: str, split: str, items: list[Item], ens: Ensemble, max_tokens: int
                ) -> list[cal.Record]:
    """Self-consistency candidates: a ``vote-qwen-x5``-like ensemble's five answers per item (greedy + 4 sampled),
    with their token log-probabilities, kept like the members' records (split name suffixed ``-samples``)."""

    def sample(item: Item) -> cal.Record:
        # A seed of the item's own: with one seed for every item, the k-th sample of every item draws from the same
        # random stream, and on questions whose letter distributions look alike it picks the same letter on most
        # of them (position noise shared across items rather than independent draws).
        seed = zlib.crc32(f"{set_name}/{item.id}".encode())
        result = ens.generate(item.prompt, max_tokens=max_tokens, temperature=0.0, seed=seed)
        cands = list(result.trace[0].candidates)
        return cal.Record(id=item.id, candidates=cands, scores={},
                          correct=[c.ok and is_correct(item, c.text) for c in cands])

    return kept_per_item(store, set_name, f"{split}-samples", items, one_at_a_time(sample), _record_to_json,
                         _record_from_json)


def extractor_of(item: Item) -> str:
    """The answer extractor (`ensemblehub_core.answers`) that votes and agreement use for an item."""
    return "choice" if item.kind == "choice" else "auto"


def vote_marks(records: list[cal.Record], items: list[Item],
               weight: Callable[[Candidate], float] = lambda c: 1.0) -> list[int]:
    """Majority over extracted answers where each answer counts ``weight(candidate)`` (ties: the earliest
    candidate's answer; no answer extracted: the first candidate's)."""
    from ensemblehub_core.answers import answer_key, get_extractor

    marks = []
    for r, item in zip(records, items, strict=True):
        extract = get_extractor(extractor_of(item))
        totals: dict[str, float] = {}
        first: dict[str, int] = {}
        for i, c in enumerate(r.candidates):
            value = extract(c.text) if c.ok else None
            if value is None:
                continue
            key = answer_key(value)
            totals[key] = totals.get(key, 0.0) + weight(c)
            first.setdefault(key, i)
        if not totals:
            marks.append(int(r.correct[0]))
            continue
        best = max(totals, key=lambda k: (totals[k], -first[k]))
        marks.append(int(r.correct[first[best]]))
    return marks


def select_marks(records: list[cal.Record], panel: ScoringPanel, weights: dict[str, float],
                 calibration: dict[str, tuple[float, float]]) -> list[int]:
    return [int(cal.select_accuracy([r], panel, weights, calibration)) for r in records]


def real_marks(store: Path, set_name: str, ens: Ensemble, fingerprint: str, items: list[Item], max_tokens: int
               ) -> tuple[list[int], dict[str, float]]:
    """Run an ensemble on the items; its marks and the seconds spent generating vs scoring.

    Each item's answer is kept in ``store`` under the split ``test-real-NAME-FINGERPRINT``, so a stopped run
    resumes; ``fingerprint`` names the ensemble's config, so a changed config answers afresh.
    """

    def answer(item: Item) -> dict[str, Any]:
        result = ens.generate(item.prompt, max_tokens=max_tokens, temperature=0.0, seed=0)
        return {"text": result.text, "generate_s": sum(r.generate_s for r in result.trace),
                "score_s": sum(r.score_s for r in result.trace)}

    rows = kept_per_item(store, set_name, f"test-real-{ens.name}-{fingerprint}", items, one_at_a_time(answer),
                         lambda row: row, lambda row: row)
    marks = [int(is_correct(it, row["text"])) for it, row in zip(items, rows, strict=True)]
    print(f"  {ens.name}: {sum(marks)}/{len(marks)} right")
    return marks, {"generate_s": round(sum(r["generate_s"] for r in rows), 2),
                   "score_s": round(sum(r["score_s"] for r in rows), 2)}


def fingerprint(*parts: Any) -> str:
    """A short name for the config an ensemble was built from (its parts as JSON)."""
    return f"{zlib.crc32(json.dumps(parts, sort_keys=True, default=str).encode()):08x}"


def rate(systems: dict[str, list[int]], members: list[str]) -> list[dict[str, Any]]:
    """Accuracy, interval and the paired comparison with the best member for every system."""
    best = max(members, key=lambda m: sum(systems[m]))
    rows = []
    for name, marks in systems.items():
        n, k = len(marks), sum(marks)
        won = sum(1 for a, b in zip(marks, systems[best], strict=True) if a and not b)
        lost = sum(1 for a, b in zip(marks, systems[best], strict=True) if b and not a)
        lo, hi = wilson(k, n)
        rows.append({"system": name, "n": n, "accuracy": k / n, "ci95": [round(lo, 3), round(hi, 3)],
                     "vs": best, "won": won, "lost": lost, "mcnemar_p": round(mcnemar_exact(won, lost), 4)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="two_operand,mmlu,quartz,basic_arithmetic,gsm_symbolic",
                    help="comma-separated: " + ", ".join(SETS) + " (the mixed set comes from mmlu + two_operand)")
    ap.add_argument("--test", type=int, default=100, help="test items per set")
    ap.add_argument("--dev", type=int, default=100, help="dev items per set (calibration only)")
    ap.add_argument("--real", default=",".join(REAL),
                    help=f"ensembles of the packaged config run for real; {SEGMENT_FITTED}: the segment strategy "
                    "over --members with confidence calibrated on each set's dev split")
    ap.add_argument("--choice", action=argparse.BooleanOptionalAction, default=True,
                    help="rate the choice strategy (pooled option-letter probabilities) on multiple-choice sets")
    ap.add_argument("--records", help="kept answers (default: benchmarks/results/quality-records[-MEMBERS].jsonl)")
    ap.add_argument("--results", default=str(RESULTS / "quality.json"))
    ap.add_argument("--samples", action=argparse.BooleanOptionalAction, default=True,
                    help="also rate self-consistency over Qwen's five answers (plain and confidence-weighted vote)")
    ap.add_argument("--only-samples", action="store_true", help="only collect the self-consistency answers")
    ap.add_argument("--samples-store",
                    help="kept self-consistency answers (default: benchmarks/results/quality-samples[-SAMPLER].jsonl)")
    ap.add_argument("--sampler", default="qwen-0.5b", choices=[*MEMBERS, *EXTRA_MEMBERS],
                    help="the member whose five answers the self-consistency rows vote over")
    ap.add_argument("--members", default=",".join(MEMBERS),
                    help="comma-separated members to rate, from the trio's and " + ", ".join(EXTRA_MEMBERS)
                    + " (another member set keeps its records in a file of its own)")
    ap.add_argument("--dtype", default="float32",
                    help="members' dtype (float32: CPUs without native bf16 run it 2-3x faster than bfloat16)")
    args = ap.parse_args()
    names = tuple(n for n in args.members.split(",") if n)
    unknown = [n for n in names if n not in MEMBERS and n not in EXTRA_MEMBERS]
    if unknown:
        raise SystemExit(f"unknown member(s) {unknown}; choose from {[*MEMBERS, *EXTRA_MEMBERS]}")
    hub = Hub(with_dtype(with_members(load_config(), names, args.sampler), args.dtype))
    members = {n: hub.ensemble("members").members[n] for n in names}
    panels = {"auto": panel_of(members), "choice": panel_of(members, "choice")}
    # Records are kept per member set (and samples per sampler): a kept record holds one answer per member.
    store = Path(args.records or RESULTS / ("quality-records.jsonl" if names == MEMBERS
                                            else f"quality-records-{'+'.join(names)}.jsonl"))
    store.parent.mkdir(parents=True, exist_ok=True)
    sets = [s for s in args.sets.split(",") if s]
    report: dict[str, Any] = {}
    test_records: dict[str, list[cal.Record]] = {}
    dev_records: dict[str, list[cal.Record]] = {}
    test_items: dict[str, list[Item]] = {}
    test_reads: dict[str, list[cal.Reading]] = {}
    dev_reads: dict[str, list[cal.Reading]] = {}
    for set_name in sets:
        make_test, make_dev, max_tokens = SETS[set_name]
        t_items = make_test(args.test)
        seen = {it.prompt for it in t_items}
        # No overlap. A small set (MedMCQA has 300 questions) shares more of a second sample with the test split,
        # so that draws more; the larger sets keep the dev items they were measured with.
        d_items: list[Item] = []
        for extra in (10, args.test + 10):
            d_items = [it for it in make_dev(args.dev + extra) if it.prompt not in seen][: args.dev]
            if len(d_items) == args.dev:
                break
        if args.dev and len(d_items) < args.dev:
            raise SystemExit(f"{set_name}: only {len(d_items)} of {args.dev} dev items differ from the test items; "
                             "calibration needs a dev split of its own (change the dev seed)")
        test_items[set_name] = t_items
        panel = panels[extractor_of(t_items[0])]
        if args.only_samples:
            continue
        dev_records[set_name] = records_for(store, set_name, "dev", d_items, members, panel, max_tokens)
        test_records[set_name] = records_for(store, set_name, "test", t_items, members, panel, max_tokens)
        if args.choice and t_items[0].kind == "choice":
            dev_reads[set_name] = readings_for(store, set_name, "dev", d_items, members)
            test_reads[set_name] = readings_for(store, set_name, "test", t_items, members)
    sampled: dict[str, list[cal.Record]] = {}
    if args.samples:
        sc = hub.ensemble("sampled")
        samples_store = Path(args.samples_store or RESULTS / ("quality-samples.jsonl" if args.sampler == "qwen-0.5b"
                                                             else f"quality-samples-{args.sampler}.jsonl"))
        for set_name in sets:
            sampled[set_name] = samples_for(samples_store, set_name, "test", test_items[set_name], sc,
                                            SETS[set_name][2])
    if args.only_samples:
        return
    if all(s in sets for s in MIXED):
        half = args.test // 2
        test_records["mixed"] = [r for s in MIXED for r in test_records[s][:half]]
        dev_records["mixed"] = [r for s in MIXED for r in dev_records[s][: args.dev // 2]]
        test_items["mixed"] = [it for s in MIXED for it in test_items[s][:half]]
    panel = panels["auto"]  # selection reads only the scorer names and weights, the same in both
    for set_name, records in test_records.items():
        t0 = time.perf_counter()
        systems: dict[str, list[int]] = {m: [int(r.correct[i]) for r in records] for i, m in enumerate(names)}
        # Not a system: the most any rule that picks one of the members' answers could get.
        systems["oracle: any member right"] = [int(any(r.correct)) for r in records]
        systems["vote (members' answers)"] = vote_marks(records, test_items[set_name])
        systems["best-of: raw confidence"] = select_marks(records, panel, {"confidence": 1.0, "agreement": 0.0,
                                                                          "cross_likelihood": 0.0}, {})
        systems["best-of: cross-likelihood"] = select_marks(records, panel, {"confidence": 0.0, "agreement": 0.0,
                                                                            "cross_likelihood": 1.0}, {})
        if set_name in sampled or (set_name == "mixed" and all(s in sampled for s in MIXED)):
            samp = sampled.get(set_name) or [r for s in MIXED for r in sampled[s][: args.test // 2]]
            systems[f"self-consistency {args.sampler} x5: vote"] = vote_marks(samp, test_items[set_name])
            systems[f"self-consistency {args.sampler} x5: confidence-weighted vote"] = vote_marks(
                samp, test_items[set_name], lambda c: math.exp(ConfidenceScorer("c").raw(c) or -50.0))
        fitted = cal.fit(dev_records[set_name], panel, list(names))
        conf_only = {"confidence": 1.0, "agreement": 0.0, "cross_likelihood": 0.0}
        systems["best-of: calibrated confidence"] = select_marks(records, panel, conf_only, fitted.calibration)
        systems["best-of: calibrated panel"] = select_marks(records, panel, fitted.weights, fitted.calibration)
        timing: dict[str, Any] = {}
        pool_weights: dict[str, float] = {}
        if set_name in test_reads:
            chosen, pool_weights = choice_systems(test_reads[set_name], dev_reads[set_name], names)
            systems.update(chosen)
        elif set_name == "mixed" and "mmlu" in test_reads:
            # Its MMLU half is read; its arithmetic half goes to the strategy's `otherwise` member (``--sampler``),
            # whose greedy answers are the kept records.
            half = args.test // 2
            arithmetic = {m: [int(r.correct[i]) for r in test_records["two_operand"][:half]]
                          for i, m in enumerate(names)}
            chosen, pool_weights = choice_systems(test_reads["mmlu"][:half], dev_reads["mmlu"][: args.dev // 2],
                                                  names, rest=arithmetic,
                                                  otherwise=args.sampler if args.sampler in names else names[0])
            systems.update(chosen)
        for name in [n for n in args.real.split(",") if n]:
            label = f"{name} (segment, real run)"
            if set_name == "mixed":  # its items are the other sets' items: reuse those runs
                parts = [report.get(s, {}).get("marks", {}).get(name) for s in MIXED]
                if all(p is not None for p in parts):
                    systems[label] = [m for p in parts for m in p[: args.test // 2]]  # type: ignore[index]
                continue
            if name == SEGMENT_FITTED:
                ens = segment_fitted(hub, names, fitted.calibration)
                key = fingerprint(hub.config.ensembles["trio"].model_dump(), names, fitted.calibration, args.dtype)
            else:
                ens, key = hub.ensemble(name), fingerprint(hub.config.ensembles[name].model_dump())
            marks, timing[name] = real_marks(store, set_name, ens, key, test_items[set_name], SETS[set_name][2])
            systems[label] = marks
        rows = rate(systems, list(names))
        report[set_name] = {"rows": rows, "timing": timing, "calibration": fitted.calibration,
                            "weights": fitted.weights, "choice_weights": pool_weights,
                            "marks": {k.split(" (")[0]: v for k, v in systems.items()},
                            "seconds": round(time.perf_counter() - t0, 1)}
        print(f"\n## {set_name} (test n={len(records)}, calibrated on {len(dev_records[set_name])} dev items)")
        print("| system | accuracy (95% CI) | vs best member: won / lost | McNemar p |")
        print("|---|---|---|---|")
        for row in rows:
            lo, hi = row["ci95"]
            print(f"| {row['system']} | {row['accuracy']:.2f} ({lo:.2f}-{hi:.2f}) | {row['won']} / {row['lost']} "
                  f"(vs {row['vs']}) | {row['mcnemar_p']:.3f} |")
        for name, t in timing.items():
            print(f"{name}: members generating {t['generate_s']} s, scorers {t['score_s']} s")
        Path(args.results).write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
