"""Round latency of a segment ensemble of API members: are the members of a round called concurrently?

Three members, each behind its own real OpenAI-compatible HTTP server on 127.0.0.1 that sleeps ``--latency``
seconds before answering (benchmarks/openai_stub.py). Called one after another a round would take about three
times the latency; called together, about one latency. Run for both API backends (``openai``, ``litellm``)::

    python -m benchmarks.api_bench            # writes benchmarks/results/api.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from benchmarks.openai_stub import Faults, create_app, fixed_text, serve_in_thread
from ensemblehub_core.engine import Ensemble
from ensemblehub_core.generators.base import Generator
from ensemblehub_core.generators.litellm import LiteLLMGenerator
from ensemblehub_core.generators.openai_compat import OpenAICompatGenerator
from ensemblehub_core.scorers.function import FunctionScorer
from ensemblehub_core.strategies.base import MemberPolicy

RESULTS = Path(__file__).with_name("results") / "api.json"
TEXT = " ".join(f"word{i}" for i in range(200))


def _member(backend: str, name: str, api_base: str) -> Generator:
    if backend == "litellm":
        return LiteLLMGenerator(name, model="openai/stub", api_base=api_base)
    return OpenAICompatGenerator(name, model="stub", api_base=api_base)


def run(backend: str, api_bases: list[str], *, rounds: int, segment_tokens: int) -> dict[str, Any]:
    members = [_member(backend, f"m{i}", base) for i, base in enumerate(api_bases)]
    ens = Ensemble(
        members,
        scorer=FunctionScorer("first", lambda request, cand: -float(cand.member[1:])),
        strategy="segment",
        strategy_params={"segment_tokens": segment_tokens, "max_rounds": rounds, "delimiters": [],
                         "repetition_window": 0},
        policy=MemberPolicy(timeout_s=30),
    )
    ens.generate("warm up", max_tokens=segment_tokens)  # client start-up and LiteLLM's import are not measured
    started = time.perf_counter()
    result = ens.generate("Go on.", max_tokens=segment_tokens * rounds)
    total = time.perf_counter() - started
    per_round = [t.generate_s + t.score_s for t in result.trace]
    return {
        "backend": backend,
        "members": len(members),
        "rounds": len(result.trace),
        "round_s_mean": round(statistics.mean(per_round), 3),
        "round_s_max": round(max(per_round), 3),
        "round_s_min": round(min(per_round), 3),
        "total_s": round(total, 3),
        "errors": sum(len(t.errors) for t in result.trace),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=1.0, help="seconds each server sleeps per request")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--segment-tokens", type=int, default=8)
    ap.add_argument("--target", type=float, default=1.2, help="round latency target, seconds")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(serve_in_thread(create_app(fixed_text(TEXT), faults=Faults(delay_s=args.latency))))
            for _ in range(args.members)
        ]
        bases = [s.api_base for s in servers]
        runs = [run(b, bases, rounds=args.rounds, segment_tokens=args.segment_tokens) for b in ("openai", "litellm")]
    report = {
        "benchmark": "api_round_latency",
        "latency_per_call_s": args.latency,
        "sequential_round_s": round(args.latency * args.members, 3),
        "target_round_s": args.target,
        "runs": runs,
        "meets_target": all(r["round_s_max"] <= args.target for r in runs),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
