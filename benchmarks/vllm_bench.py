"""vLLM member vs transformers member: the same models, the same segment ensemble, tokens per second.

    make bench-vllm                                   # runs this in .venv-vllm
    .venv-vllm/bin/python -m benchmarks.vllm_bench --quick

A two-member segment ensemble (SmolLM2-135M-Instruct + Qwen2.5-Coder-0.5B-Instruct, float32, 16-token
segments, scored by SmolLM2's likelihood on transformers in every run so only the members' engine changes)
answers the same questions with its members run by

- ``hf``: transformers, sessions keeping each member's KV cache across rounds;
- ``vllm``: vLLM with automatic prefix caching (each round re-sends prompt + prefix; the engine reuses blocks);
- ``vllm-no-apc``: vLLM with prefix caching off (each round re-encodes everything).

Reported: accepted tokens per second of the ensemble, the members' generation seconds, and for vLLM the share
of prompt tokens served from the prefix cache. Also each engine alone: one member decoding 8 prompts one by one
vs in one batch. All runs in one process, one after another; ratios within one run are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from benchmarks.run import table
from ensemblehub_core.config import parse_config
from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.hub import Hub
from ensemblehub_core.types import Message

RESULTS = Path(__file__).parent / "results"
MODELS = {"smollm2-135m": "embedded:smollm2-135m-instruct", "qwen-0.5b": "embedded:qwen2.5-coder-0.5b-instruct"}
CONTEXT = (
    "You are a careful assistant. Read the question, think step by step, and give a short, correct answer. "
    "Numbers for reference: " + ", ".join(str(i) for i in range(100, 220)) + ".\n\n"
)
QUESTIONS = [
    "Which of the reference numbers between 100 and 120 are prime? Explain briefly.",
    "What is the sum of 137 and 205? Show the steps.",
    "Why is the sky blue? Answer in three sentences.",
]
BATCH_PROMPTS = [f"Write one sentence about the number {i}." for i in range(8)]


def config(kv_bytes: int) -> dict[str, Any]:
    def member(name: str, backend: str, apc: bool = True) -> dict[str, Any]:
        m: dict[str, Any] = {"name": name, "backend": backend, "model": MODELS[name], "dtype": "float32"}
        if backend == "vllm":
            m["options"] = {"enable_prefix_caching": apc, "enforce_eager": True, "max_model_len": 2048,
                            "kv_cache_memory_bytes": kv_bytes}
        return m

    scorer = {"type": "likelihood", "model": MODELS["smollm2-135m"], "dtype": "float32"}
    strategy = {"name": "segment", "segment_tokens": 16}
    ensembles: dict[str, Any] = {}
    for run, backend, apc in (("hf", "hf", True), ("vllm", "vllm", True), ("vllm-no-apc", "vllm", False)):
        ensembles[run] = {
            "members": [member(n, backend, apc) for n in MODELS],
            "scorer": scorer,
            "strategy": strategy,
        }
    return {"ensembles": ensembles}


def run_ensemble(hub: Hub, name: str, max_tokens: int) -> dict[str, Any]:
    ens = hub.ensemble(name)
    ens.generate("Say hi.", max_tokens=4)  # warm-up: engine start, first-call allocations
    engines = {id(g.engine): g.engine for g in ens.members.values() if hasattr(g, "engine")}
    before = {k: dict(e.counts) for k, e in engines.items()}
    tokens, gen_s, started = 0, 0.0, time.perf_counter()
    for q in QUESTIONS:
        result = ens.generate(CONTEXT + q, max_tokens=max_tokens)
        tokens += result.usage.completion_tokens
        gen_s += sum(c.elapsed_s for r in result.trace for c in r.candidates)
    wall = time.perf_counter() - started
    out: dict[str, Any] = {"accepted_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
                           "member_generation_s": gen_s}
    if engines:
        sent = sum(e.counts["prompt_tokens"] - before[k]["prompt_tokens"] for k, e in engines.items())
        cached = sum(e.counts["cached_tokens"] - before[k]["cached_tokens"] for k, e in engines.items())
        out["prompt_tokens_sent"], out["cached_share"] = sent, cached / max(sent, 1)
    return out


def batch_speed(hub: Hub, name: str, new_tokens: int) -> dict[str, Any]:
    gen = hub.ensemble(name).members["smollm2-135m"]
    prompts = [([Message(role="user", content=p)], "") for p in BATCH_PROMPTS]
    req = SegmentRequest(max_new_tokens=new_tokens)
    asyncio.run(gen.complete(*prompts[0], req))  # warm-up
    t0 = time.perf_counter()
    one = [asyncio.run(gen.complete(m, p, req)) for m, p in prompts]
    t1 = time.perf_counter()
    many = asyncio.run(gen.complete_many(prompts, req))
    t2 = time.perf_counter()
    n1, n8 = sum(c.token_count for c in one), sum(c.token_count for c in many)
    return {"one_by_one_tok_s": n1 / (t1 - t0), "batch8_tok_s": n8 / (t2 - t1),
            "batch_speedup": (n8 / (t2 - t1)) / (n1 / (t1 - t0))}


def main() -> None:
    # vLLM's CPU build binds its workers to all cores but one by default (kept for the front-end process);
    # transformers uses every core. Give both the same cores so the comparison is of engines, not of threads.
    cores = os.cpu_count() or 1
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32 answer tokens instead of 96")
    ap.add_argument("--kv-mib", type=int, default=256, help="KV cache memory per vLLM engine (MiB)")
    args = ap.parse_args()
    max_tokens = 32 if args.quick else 96
    hub = Hub(parse_config(config(args.kv_mib << 20)))
    report: dict[str, Any] = {"machine": platform.platform(), "max_tokens": max_tokens, "segment": {}, "batch": {}}
    for name in ("hf", "vllm", "vllm-no-apc"):
        report["segment"][name] = run_ensemble(hub, name, max_tokens)
        print(name, report["segment"][name], flush=True)
    for name in ("hf", "vllm"):
        report["batch"][name] = batch_speed(hub, name, 32 if args.quick else 64)
        print(name, report["batch"][name], flush=True)
    seg = report["segment"]
    table("Segment ensemble (SmolLM2 + Qwen2.5-0.5B, fp32, 16-token segments)",
          ["members on", "tokens", "wall s", "tok/s", "vs hf", "member gen s", "prefix-cached share"],
          [[n, r["accepted_tokens"], f"{r['wall_s']:.1f}", f"{r['tokens_per_s']:.2f}",
            f"{r['tokens_per_s'] / seg['hf']['tokens_per_s']:.2f}", f"{r['member_generation_s']:.1f}",
            f"{r['cached_share']:.2f}" if "cached_share" in r else "-"] for n, r in seg.items()])
    table("SmolLM2 alone: 8 prompts one by one vs one batch",
          ["engine", "one-by-one tok/s", "batch of 8 tok/s", "speed-up"],
          [[n, f"{r['one_by_one_tok_s']:.1f}", f"{r['batch8_tok_s']:.1f}", f"{r['batch_speedup']:.2f}"]
           for n, r in report["batch"].items()])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vllm.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS / 'vllm.json'}")


if __name__ == "__main__":
    main()
