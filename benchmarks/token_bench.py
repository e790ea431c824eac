"""Token-level benchmark: what a GaC / UniTE token costs next to the members' own decode steps.

    python -m benchmarks.token_bench             # 2 and 3 members with different tokenizers, 48 tokens
    python -m benchmarks.token_bench --quick     # 24 tokens

For each member set (SmolLM2 49k BPE + Qwen2.5 152k BPE, then + Gemma-3 262k SentencePiece) it streams one
answer and, after every token, times one single-token decode step of each member on its own KV cache: the
ratio of the two, token by token, is robust to a machine whose load changes. The first token (every member's
prompt prefill) is left out. The target is ensemble / sum of member steps <= 1.3. It also times building the
union vocabulary (cold, then cached) and reports its memory. Prints tables and writes
benchmarks/results/token.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

import torch

from ensemblehub_core._torch import forward, make_cache
from ensemblehub_core.engine import Ensemble
from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.generators.hf_tokens import vocab_of
from ensemblehub_core.hub import Hub
from ensemblehub_core.strategies.vocab import clear_caches, union_vocab
from ensemblehub_core.types import Message

RESULTS = Path(__file__).parent / "results"
PROMPT = "Write a short paragraph about the history of Paris."
RUNS: list[tuple[str, dict[str, Any]]] = [
    ("gac", {}),
    ("unite", {"top_k": 10}),
    ("gac", {"primary": "qwen-0.5b", "gate_threshold": 0.8}),
]


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    print(f"\n## {title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)))


def members() -> dict[str, HFGenerator]:
    """The default config's three members (Gemma with its few-shot prompt), loaded once through the pool."""
    found = Hub().ensemble("gac-trio").members
    return {name: gen for name, gen in found.items() if isinstance(gen, HFGenerator)}


class Solo:
    """A member decoding greedily on its own KV cache, one token per `step`, to pair with ensemble steps."""

    def __init__(self, gen: HFGenerator) -> None:
        self.gen = gen
        self.cache = make_cache(gen.model)
        self.logits = forward(gen.model, gen.encode_prompt([Message(role="user", content=PROMPT)]), self.cache)

    def step(self) -> float:
        """Seconds of one single-token forward pass."""
        token = int(torch.argmax(self.logits))
        started = time.perf_counter()
        self.logits = forward(self.gen.model, [token], self.cache)
        return time.perf_counter() - started


def union_figures(gens: list[HFGenerator]) -> dict[str, Any]:
    """Cold build of the members' byte vocabularies and their union, then a cached lookup."""
    clear_caches()
    started = time.perf_counter()
    vocabs = [vocab_of(g) for g in gens]
    member_s = time.perf_counter() - started
    tracemalloc.start()
    union, _ = union_vocab(vocabs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    started = time.perf_counter()
    _, cached = union_vocab(vocabs)
    return {
        "members": [g.name for g in gens],
        "vocab_sizes": [v.size for v in vocabs],
        "union_size": union.size,
        "member_vocabs_build_s": round(member_s, 3),
        "union_build_s": round(union.build_s, 3),
        "union_mb": round(union.nbytes / 2**20, 1),
        "union_build_peak_python_mb": round(peak / 2**20, 1),
        "cached_lookup_ms": round((time.perf_counter() - started) * 1000, 3),
        "cached": cached,
    }


def token_run(gens: list[HFGenerator], strategy: str, params: dict[str, Any], tokens: int) -> dict[str, Any]:
    """One ensemble answer, each token paired with one solo decode step of every member taken right after it.

    Pairing step by step keeps the comparison fair on a machine whose load changes from second to second.
    The first token is left out (it includes every member's prompt prefill).
    """
    ens = Ensemble(gens, strategy=strategy, strategy_params=params)
    ens.generate(PROMPT, max_tokens=4)  # warm-up
    solos = [Solo(g) for g in gens]
    walls: list[float] = []
    paired: list[float] = []
    per_member: dict[str, list[float]] = {g.name: [] for g in gens}
    result = None
    last = time.perf_counter()
    for chunk in ens.stream(PROMPT, max_tokens=tokens):
        arrived = time.perf_counter()
        result = chunk.result or result
        if chunk.round is None or not chunk.round.candidates:
            continue
        if chunk.round.index > 0:
            walls.append(arrived - last)
            times = [solo.step() for solo in solos]
            for solo, t in zip(solos, times, strict=True):
                per_member[solo.gen.name].append(t)
            paired.append(sum(times))
        last = time.perf_counter()
    assert result is not None
    ratios = [w / p for w, p in zip(walls, paired, strict=True)]
    info = result.extra["token_level"]
    step, overhead = info["decode_step_s"], info["overhead_step_s"]
    return {
        "strategy": strategy,
        "params": params,
        "members": [g.name for g in gens],
        "tokens": info["steps"],
        "finish_reason": result.finish_reason,
        "per_token_s": statistics.median(walls),
        "member_decode_s": {n: statistics.median(v) for n, v in per_member.items()},
        "sum_member_decode_s": statistics.median(paired),
        "ratio_median": statistics.median(ratios),
        "ratio_mean": statistics.fmean(ratios),
        "ratio_p90": sorted(ratios)[int(0.9 * (len(ratios) - 1))],
        "step_s": step,
        "overhead_step_s": overhead,
        "in_step_ratio": step / (step - overhead) if step > overhead else float("nan"),
        "gated_steps": info["gated_steps"],
        "member_stats": info["members"],
        "text": result.text,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="24 tokens instead of 48")
    args = parser.parse_args()
    tokens = 24 if args.quick else 48
    torch.set_grad_enabled(False)
    gens = members()
    order = ["smollm2-135m", "qwen-0.5b", "gemma3-270m"]
    sets = {"2 members": [gens[n] for n in order[:2]], "3 members": [gens[n] for n in order]}
    out: dict[str, Any] = {"machine": platform.platform(), "threads": torch.get_num_threads(), "tokens": tokens}
    out["union"] = {label: union_figures(g) for label, g in sets.items()}
    table("Union vocabulary (built once per member set, then cached)",
          ["set", "vocab sizes", "union", "member vocabs s", "union s", "union MB", "cached ms"],
          [[k, "+".join(map(str, u["vocab_sizes"])), u["union_size"], u["member_vocabs_build_s"],
            u["union_build_s"], u["union_mb"], u["cached_lookup_ms"]] for k, u in out["union"].items()])
    runs = []
    for label, group in sets.items():
        for strategy, params in RUNS:
            if "gate_threshold" in params and len(group) < 3:
                continue
            run = token_run(group, strategy, params, tokens)
            run["set"] = label
            runs.append(run)
    out["runs"] = runs
    table("Per token: ensemble time vs the members' own single-token decode steps, paired step by step (<= 1.3)",
          ["set", "strategy", "tokens", "ms/token", "members ms (each)", "sum ms", "ratio median", "mean", "p90",
           "overhead ms", "gated"],
          [[r["set"], r["strategy"] + (" gated" if "gate_threshold" in r["params"] else ""),
            r["tokens"], f"{r['per_token_s'] * 1e3:.1f}",
            "+".join(f"{v * 1e3:.1f}" for v in r["member_decode_s"].values()),
            f"{r['sum_member_decode_s'] * 1e3:.1f}", f"{r['ratio_median']:.2f}", f"{r['ratio_mean']:.2f}",
            f"{r['ratio_p90']:.2f}", f"{r['overhead_step_s'] * 1e3:.2f}", r["gated_steps"]] for r in runs])
    print("ms/token: median time from one streamed token to the next (after the first);\n"
          "ratio: that time over the members' own decode steps taken right after the same token;\n"
          "overhead: time per step outside the members' forward passes (combining, re-tokenizing, feeding back).")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "token.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nwrote {RESULTS / 'token.json'}")


if __name__ == "__main__":
    main()
