"""Core benchmarks (`make bench`): engine overhead, cost growth with answer length, bf16 vs float32 on this machine,
the decode loop against plain ``model.generate``, and answer quality.

    python -m benchmarks.run                      # all three, full sizes (100 MMLU + 50 arithmetic)
    python -m benchmarks.run --quick              # small sizes, for a smoke run
    python -m benchmarks.run --only growth

Prints a table per section and writes benchmarks/results/core.json. Figures are ratios measured within one run;
absolute seconds on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ensemblehub_core.engine import Ensemble
from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.hub import Hub
from ensemblehub_core.scorers.base import ScoreRequest
from ensemblehub_core.scorers.likelihood import LikelihoodScorer
from ensemblehub_core.strategies.segment import SegmentStrategy

RESULTS = Path(__file__).parent / "results"
OVERHEAD_QUESTIONS = [
    "What is 17 + 25? Explain briefly.",
    "Why do leaves change color in autumn?",
    "Name three prime numbers greater than 10.",
]


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    print(f"\n## {title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)))


# -- overhead -----------------------------------------------------------------------------------------------
def overhead(hub: Hub, max_tokens: int) -> dict[str, Any]:
    """Ensemble wall time vs the same members' and scorer's work replayed alone, round for round."""
    ens = hub.ensemble("trio")
    strategy = ens.strategy
    assert isinstance(strategy, SegmentStrategy)
    rows = []
    for q in OVERHEAD_QUESTIONS:
        ens.generate(q, max_tokens=8)  # warm-up (allocations, first-call costs)
        t0 = time.perf_counter()
        result = ens.generate(q, max_tokens=max_tokens)
        wall = time.perf_counter() - t0
        member_s, score_s = _replay(ens, q, result, strategy, max_tokens)
        rows.append({"question": q, "rounds": len(result.trace), "wall_s": wall, "members_s": member_s,
                     "scorer_s": score_s, "ratio": wall / (member_s + score_s)})
    table("Overhead: ensemble wall time / (members alone + scorer alone), same tokens",
          ["question", "rounds", "wall s", "members s", "scorer s", "ratio"],
          [[r["question"][:32], r["rounds"], f"{r['wall_s']:.2f}", f"{r['members_s']:.2f}",
            f"{r['scorer_s']:.2f}", f"{r['ratio']:.3f}"] for r in rows])
    mean = sum(r["ratio"] for r in rows) / len(rows)
    print(f"mean ratio {mean:.3f} (target <= 1.15)")
    return {"rows": rows, "mean_ratio": mean, "target": 1.15}


def _replay(ens: Ensemble, q: str, result: Any, strategy: SegmentStrategy, max_tokens: int) -> tuple[float, float]:
    """Redo each member's rounds alone (same budgets, same accepted text), then the scorer's, and time them."""
    from ensemblehub_core.engine import to_messages

    msgs = to_messages(q)
    p = strategy.params
    member_s = 0.0
    for name, gen in ens.members.items():
        session = gen.open_session(msgs)
        used = 0
        t0 = time.perf_counter()
        for r in result.trace:
            budget = min(p.segment_tokens, max_tokens - used)
            cand = asyncio.run(session.generate(SegmentRequest(max_new_tokens=budget, delimiters=p.delimiters)))
            session.accept(r.accepted_text, own=cand if r.winner == name else None)
            used += r.accepted_tokens
        member_s += time.perf_counter() - t0
        session.close()
    score_s = 0.0
    if ens.panel is not None:
        state: dict[object, object] = {}
        prefix = ""
        for r in result.trace:
            t0 = time.perf_counter()
            asyncio.run(ens.panel.score(ScoreRequest(messages=msgs, prefix=prefix, candidates=r.candidates,
                                                     state=state)))
            score_s += time.perf_counter() - t0
            prefix += r.accepted_text
    return member_s, score_s


# -- growth -------------------------------------------------------------------------------------------------
def growth(hub: Hub, marks: tuple[int, ...] = (64, 256, 512)) -> dict[str, Any]:
    """Time per accepted token near 64/256/512 accepted tokens, kept KV caches vs re-encoding every round."""
    trio = hub.ensemble("trio")
    members = []
    for name in ("smollm2-135m", "gemma3-270m"):
        g = trio.members[name]
        assert isinstance(g, HFGenerator)
        # A copy that never ends, so every run reaches the same length (a benchmark-only setting).
        free = HFGenerator(name, g.loaded, prompt_format=g.prompt_format)
        free.eos_ids = set()
        members.append(free)
    scorer = LikelihoodScorer("likelihood", members[0])
    out: dict[str, Any] = {}
    for mode, incremental in (("kept KV cache", True), ("re-encode every round", False)):
        ens = Ensemble(members, scorer=scorer, strategy="segment",
                       strategy_params={"segment_tokens": 16, "delimiters": [], "repetition_window": 0,
                                        "incremental": incremental, "max_rounds": 1000})
        result = ens.generate("Write a long story about a lighthouse keeper and a storm.", max_tokens=max(marks))
        per_token = {}
        used = 0
        windows: dict[int, list[float]] = {m: [0.0, 0.0] for m in marks}
        for r in result.trace:
            used += r.accepted_tokens
            for m in marks:
                if m - 64 < used <= m:
                    windows[m][0] += r.generate_s + r.score_s
                    windows[m][1] += r.accepted_tokens
        for m in marks:
            secs, toks = windows[m]
            per_token[m] = secs / toks * 1000 if toks else float("nan")
        out[mode] = {"ms_per_token": per_token, "ratio_last_first": per_token[marks[-1]] / per_token[marks[0]],
                     "tokens": result.usage.completion_tokens}
    table("Growth: ms per accepted token in the 64 tokens before each mark (SmolLM2 + Gemma-3, likelihood scorer)",
          ["mode", *[f"@{m}" for m in marks], f"@{marks[-1]} / @{marks[0]}"],
          [[mode, *[f"{v['ms_per_token'][m]:.1f}" for m in marks], f"{v['ratio_last_first']:.2f}"]
           for mode, v in out.items()])
    print("target: kept-cache ratio <= 1.3")
    return out


# -- number format ------------------------------------------------------------------------------------------
DTYPE_MODELS = ("embedded:smollm2-135m-instruct", "embedded:qwen2.5-coder-0.5b-instruct")


def dtypes(prompt_tokens: int = 256, new_tokens: int = 32) -> dict[str, Any]:
    """bf16 against float32 on this machine: a prefill of ``prompt_tokens`` and ``new_tokens`` greedy tokens per
    model, and what ``dtype: auto`` picks here (bf16 only where the CPU computes it natively)."""
    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.models.loader import auto_dtype, cpu_has_native_bf16
    from ensemblehub_core.pool import ModelPool
    from ensemblehub_core.types import Message

    out: dict[str, Any] = {"auto": auto_dtype("cpu"), "native_bf16": cpu_has_native_bf16(), "models": {}}
    rows = []
    for source in DTYPE_MODELS:
        timings: dict[str, dict[str, float]] = {}
        for dtype in ("bfloat16", "float32"):
            gen = HFGenerator(source.split(":")[1], ModelPool.default().get(ModelSpec(source=source, dtype=dtype)))
            words = " ".join(f"w{i}" for i in range(prompt_tokens))
            ids = gen.encode(words)[:prompt_tokens]
            prompt = [Message(role="user", content=gen.loaded.tokenizer.decode(ids))]
            request = SegmentRequest(max_new_tokens=new_tokens)
            asyncio.run(gen.complete([Message(role="user", content="Hi")], "", SegmentRequest(max_new_tokens=2)))
            t0 = time.perf_counter()
            asyncio.run(gen.complete(prompt, "", SegmentRequest(max_new_tokens=1)))
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            cand = asyncio.run(gen.complete(prompt, "", request))
            total = time.perf_counter() - t0
            decode = max(total - prefill, 1e-9) / max(cand.token_count - 1, 1)
            timings[dtype] = {"prefill_s": round(prefill, 3), "decode_ms_per_token": round(decode * 1000, 1)}
            ModelPool.default().evict(ModelSpec(source=source, dtype=dtype))
        b, f = timings["bfloat16"], timings["float32"]
        ratio = {"prefill": round(b["prefill_s"] / f["prefill_s"], 2),
                 "decode": round(b["decode_ms_per_token"] / f["decode_ms_per_token"], 2)}
        out["models"][source] = {**timings, "bf16_over_fp32": ratio}
        rows.append([source.split(":")[1], b["prefill_s"], f["prefill_s"], ratio["prefill"],
                     b["decode_ms_per_token"], f["decode_ms_per_token"], ratio["decode"]])
    table(f"Number format: bf16 vs float32, prefill of {prompt_tokens} tokens and greedy decode (time ratio "
          "bf16 / fp32 > 1: bf16 is slower here)",
          ["model", "bf16 prefill s", "fp32 prefill s", "ratio", "bf16 ms/tok", "fp32 ms/tok", "ratio"], rows)
    print(f"dtype auto on this CPU: {out['auto']} (native bf16: {out['native_bf16']})")
    return out


# -- decode loop --------------------------------------------------------------------------------------------
def loop(tokens: int = 64, runs: int = 5) -> dict[str, Any]:
    """A member's own decode loop (`HFSession`, what every strategy runs) against plain ``model.generate`` on the
    same model and prompt, greedy, the same tokens: tokens/s of each, median of ``runs`` warm runs, alternated.

    Small models on a CPU spend much of each step outside the matrix products (Python, dispatch), as models on a
    GPU do; the ratio shows what the loop adds to that."""
    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.pool import ModelPool

    out: dict[str, Any] = {"tokens": tokens, "runs": runs, "models": {}}
    rows = []
    for source in DTYPE_MODELS:
        gen = HFGenerator(source.split(":")[1], ModelPool.default().get(ModelSpec(source=source)))
        g, s = _loop_speeds(gen, tokens, runs)
        out["models"][source] = {"generate_tok_s": round(g, 2), "session_tok_s": round(s, 2),
                                 "ratio": round(s / g, 3)}
        rows.append([source.split(":")[1], f"{g:.1f}", f"{s:.1f}", f"{s / g:.3f}"])
    table(f"Decode loop: HFSession / plain model.generate, {tokens} greedy tokens (ratio >= 0.95 wanted)",
          ["model", "generate tok/s", "session tok/s", "ratio"], rows)
    out["answer_text"] = _answer_text_cost()
    return out


def _answer_text_cost(length: int = 512) -> dict[str, Any]:
    """Host time per token to keep an answer's text for the stop-string check, over a ``length``-token answer:
    decoding the whole answer at every token (the loop before `AnswerText`) against `AnswerText`'s window."""
    from ensemblehub_core._text import cut_text
    from ensemblehub_core.generators._hf_common import AnswerText
    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.pool import ModelPool

    text = " ".join(f"Step {i}: add {i} to the total, which is now {i * (i + 1) // 2}." for i in range(200))
    out: dict[str, Any] = {"tokens": length}
    rows = []
    for source in DTYPE_MODELS:
        tok = ModelPool.default().get(ModelSpec(source=source)).tokenizer
        ids = tok(text, add_special_tokens=False).input_ids[:length]

        def decode(part: Any, tok: Any = tok) -> str:
            return str(tok.decode(list(part), skip_special_tokens=False))

        t0 = time.perf_counter()
        for k in range(1, len(ids) + 1):
            cut_text(decode(ids[:k]), ["\n\nQuestion:"], [])
        whole = (time.perf_counter() - t0) / len(ids)
        answer = AnswerText(decode)
        t0 = time.perf_counter()
        for i in ids:
            cut_text(answer.append(i), ["\n\nQuestion:"], [])
        window = (time.perf_counter() - t0) / len(ids)
        assert answer.text == decode(ids)
        out[source] = {"whole_us": round(whole * 1e6, 1), "window_us": round(window * 1e6, 1)}
        rows.append([source.split(":")[1], f"{whole * 1e6:.0f}", f"{window * 1e6:.0f}", f"{window / whole:.3f}"])
    table(f"Answer text for the stop-string check, per token over a {length}-token answer (us)",
          ["model", "decode whole answer", "AnswerText window", "ratio"], rows)
    return out


def _loop_speeds(gen: HFGenerator, tokens: int, runs: int) -> tuple[float, float]:
    """Median tokens/s of ``model.generate`` and of the member's session, alternated run by run."""
    import statistics

    from benchmarks.decode_loop import decode_pair

    generate, session = decode_pair(gen, tokens)
    if len(generate()) != session(tokens).token_count:  # also the warm-up
        print(f"{gen.name}: generate and the session stopped at different lengths")
    runners: dict[str, Callable[[], int]] = {"generate": lambda: len(generate()),
                                             "session": lambda: session(tokens).token_count}
    speeds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(runs):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            n = fn()
            speeds[name].append(n / (time.perf_counter() - t0))
    return statistics.median(speeds["generate"]), statistics.median(speeds["session"])


# -- quality ------------------------------------------------------------------------------------------------
OTHER_STRATEGIES = (
    "gac-duo", "vote-trio", "unite-duo", "best-of-duo", "vote-qwen-x5", "fuse-duo", "rank-duo", "gac-trio",
)


def quality(
    hub: Hub, n_mmlu: int, n_arith: int, strategies: bool = False, done: dict[str, Any] | None = None,
    save: Any = None, only: list[str] | None = None,
) -> dict[str, Any]:
    """Accuracy of each member alone, the random baseline and the ensembles on fixed held-out sets.

    Systems already in ``done`` with the same set sizes are kept, not re-run (a long run that was stopped
    resumes); ``save`` is called with the table after every system; ``only`` keeps the systems whose name
    contains one of its words. Per-item results are kept, so subsets can be compared later.
    """
    from benchmarks.datasets import arithmetic, is_correct, mmlu

    sets = {"mmlu": (mmlu(n_mmlu), 16), "arithmetic": (arithmetic(n_arith), 64)}
    trio = hub.ensemble("trio")
    systems: dict[str, Ensemble] = {
        f"{name} alone": Ensemble([g], strategy="single", name=name) for name, g in trio.members.items()
    }
    systems["random (trio)"] = Ensemble(trio.members, strategy="random", strategy_params={"segment_tokens": 24})
    systems["segment trio + judge"] = trio
    systems["segment duo + likelihood"] = hub.ensemble("duo")
    if strategies:  # the response- and token-level ensembles of the packaged config
        systems.update({name: hub.ensemble(name) for name in OTHER_STRATEGIES})
    if only:
        systems = {k: v for k, v in systems.items() if any(word in k for word in only)}
    out: dict[str, Any] = {}
    for sys_name, ens in systems.items():
        previous = (done or {}).get(sys_name, {})
        if all(previous.get(k, {}).get("n") == len(items) for k, (items, _) in sets.items()):
            out[sys_name] = previous
            continue
        out[sys_name] = {}
        for set_name, (items, max_tokens) in sets.items():
            t0 = time.perf_counter()
            marks: list[int] = []
            for i, it in enumerate(items, 1):
                marks.append(int(is_correct(it, ens.generate(it.prompt, max_tokens=max_tokens, seed=0).text)))
                print(f"\r  {sys_name:28s} {set_name:10s} {sum(marks)}/{i}", end="", flush=True)
            print()
            out[sys_name][set_name] = {"accuracy": sum(marks) / len(items), "n": len(items),
                                       "seconds": time.perf_counter() - t0, "items": marks}
        if save is not None:
            save(out)
    table("Quality: accuracy on held-out sets (greedy)", ["system", *sets],
          [[s, *[f"{v[k]['accuracy']:.2f} ({v[k]['seconds']:.0f}s)" for k in sets]] for s, v in out.items()])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--only", choices=["overhead", "growth", "dtype", "loop", "quality"], action="append")
    ap.add_argument("--mmlu", type=int, default=100)
    ap.add_argument("--arith", type=int, default=50)
    ap.add_argument("--strategies", action="store_true",
                    help="also rate the response- and token-level ensembles (slow on a CPU)")
    ap.add_argument("--systems", action="append",
                    help="quality: only systems whose name contains this word (repeatable), e.g. alone, vote")
    ap.add_argument("--results", default=None, help="results file name under benchmarks/results/")
    ap.add_argument("--resume", action="store_true",
                    help="keep quality figures already in the results file for systems rated on the same sizes")
    args = ap.parse_args()
    sections = args.only or ["overhead", "growth", "dtype", "loop", "quality"]
    hub = Hub()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / (args.results or ("core-quick.json" if args.quick else "core.json"))
    existing: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def save(section: str, value: Any) -> None:
        existing.update({"machine": platform.platform(), "python": platform.python_version(), section: value})
        path.write_text(json.dumps(existing, indent=2))

    if "overhead" in sections:
        save("overhead", overhead(hub, max_tokens=32 if args.quick else 64))
    if "growth" in sections:
        save("growth", growth(hub, (32, 64, 128) if args.quick else (64, 256, 512)))
    if "dtype" in sections:
        save("dtype", dtypes(64 if args.quick else 256, 8 if args.quick else 32))
    if "loop" in sections:
        save("loop", loop(16 if args.quick else 64, 3 if args.quick else 5))
    if "quality" in sections:
        done = existing.get("quality", {}) if args.resume else {}
        # Systems left out by --systems keep their saved figures: a partial run adds to the table.
        kept = existing.get("quality", {}) if args.systems else {}

        def save_quality(q: dict[str, Any]) -> None:
            save("quality", {**kept, **q})

        save_quality(quality(hub, 5 if args.quick else args.mmlu, 5 if args.quick else args.arith,
                             strategies=args.strategies, done=done, save=save_quality, only=args.systems))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
