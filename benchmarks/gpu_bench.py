"""GPU benchmark: the engine's decode loops against transformers' own, on random-weight models of real shapes.

Builds Qwen2.5-1.5B- and SmolLM2-1.7B-shaped models with random weights from the config + tokenizer folders in
``.gpu/tok`` (see ``benchmarks/random_models.py``), saves them under ``/tmp``, loads them through the project's own
path (``device: cuda``, ``dtype: auto``) and measures, warm, as medians:

- one member, 128 new tokens: `HFSession` vs eager ``model.generate`` (goal: at least 0.95x);
- segment ensemble of the two, likelihood scorer, 16-token segments, 256 tokens: kept KV caches vs
  ``incremental: false`` (goal: kept at least 1.3x faster);
- ``gac`` and ``unite``: time per token vs the sum of the members' own decode steps (goal: at most 1.3x);
- continuous batching (`StepBatcher`), 1 / 8 / 32 streams x 128 tokens, and ``model.generate`` on a batch of 32;
- the compiled path (``options: {compile: true}``) vs ``model.generate`` with a static cache, compiled
  (goal: at least 0.8x); last, as compiling takes the longest.

Each result is printed and appended as a JSON line to ``OUT/gpu_bench.jsonl`` as soon as it is measured, so a run
cut short still leaves what it got. ``--device cpu --small`` is a dry run with tiny shapes and few tokens.
``--device cpu --deep`` keeps the real depths (28 and 24 layers) at 64 wide and runs on one thread: nearly all of
a step is then host work (Python, kernel launches), as it is for models of this size on a GPU, so the ratios show
where the engine's own host work costs, without a GPU. It is a proxy, not a GPU figure.

Usage::

    python -m benchmarks.gpu_bench --out "$OUT"            # on the GPU machine
    python -m benchmarks.gpu_bench --device cpu --small --out /tmp/bench
    python -m benchmarks.gpu_bench --device cpu --deep --only session,segment,token,batch --out /tmp/bench
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.decode_loop import QUESTION as Q
from benchmarks.decode_loop import decode_pair
from benchmarks.random_models import QWEN_1_5B, SMOL_1_7B, TINY_QWEN, TINY_SMOL, build_random_model, tok_root


class Bench:
    """Shared state: devices, sizes, where results go."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.torch = torch
        self.device = args.device
        self.small = args.small
        self.deep = args.deep
        # The proxy stays in float32: CPU bf16 kernels for a few tokens at once are slower than for one (a CPU
        # matmul artefact, not host work), which would blur what the proxy is for.
        self.dtype = "float32" if self.deep else "auto"
        self.runs = args.runs
        out = Path(args.out or os.environ.get("OUT") or "/tmp/gpu_bench")
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "gpu_bench.jsonl"
        self.started = time.perf_counter()
        self.tokens = 16 if self.small else 128
        self.segment_total = 32 if self.small else 256

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def timed(self, fn: Callable[[], Any], runs: int | None = None, warm: int = 1) -> tuple[float, Any]:
        """Median seconds of ``runs`` calls after ``warm`` untimed ones; also the last call's result."""
        result = None
        for _ in range(warm):
            result = fn()
        times = []
        for _ in range(runs or self.runs):
            self.sync()
            t = time.perf_counter()
            result = fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times), result

    def write(self, name: str, **facts: Any) -> None:
        row = {"name": name, "device": self.device, "small": self.small, "deep": self.deep,
               "at_s": round(time.perf_counter() - self.started, 1), **facts}
        print(json.dumps(row), flush=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def build_models(b: Bench) -> dict[str, str]:
    root = Path(os.environ.get("ENSEMBLEHUB_GPU_MODELS", "/tmp/ensemblehub_gpu_models"))
    dtype = "bfloat16" if b.device.startswith("cuda") else "float32"
    size = "small" if b.small else "deep" if b.deep else "full"
    shapes = {
        "small": {"qwen": TINY_QWEN, "smol": TINY_SMOL},
        "full": {"qwen": QWEN_1_5B, "smol": SMOL_1_7B},
        "deep": {"qwen": {**TINY_QWEN, "num_hidden_layers": QWEN_1_5B["num_hidden_layers"]},  # real depths,
                 "smol": {**TINY_SMOL, "num_hidden_layers": SMOL_1_7B["num_hidden_layers"]}},  # tiny widths
    }[size]
    out = {}
    for name, shape in shapes.items():
        t = time.perf_counter()
        folder = root / f"{name}-{size}-{dtype}"
        out[name] = str(build_random_model(tok_root() / name, folder, shape, dtype=dtype, device=b.device))
        b.write("build", model=name, folder=out[name], s=round(time.perf_counter() - t, 1))
    return out


def member(b: Bench, folder: str, name: str) -> Any:
    from ensemblehub_core.generators.hf import HFGenerator
    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.pool import ModelPool

    return HFGenerator(name, ModelPool.default().get(ModelSpec(source=folder, dtype=b.dtype, device=b.device)))


def bench_session_vs_generate(b: Bench, gen: Any) -> float:
    """HFSession vs eager ``model.generate`` for one member; returns the member's own seconds per decode step."""
    n = b.tokens
    generate, session = decode_pair(gen, n)
    t_gen, out = b.timed(generate)
    t_ses, cand = b.timed(lambda: session(n))
    t_one, _ = b.timed(lambda: session(1))
    b.write("session_vs_generate", member=gen.name, tokens=n, session_tokens=cand.token_count,
            generate_tokens=len(out), session_tok_s=round(cand.token_count / t_ses, 2),
            generate_tok_s=round(len(out) / t_gen, 2),
            ratio=round((cand.token_count / t_ses) / (len(out) / t_gen), 3), goal=">= 0.95",
            same_tokens_as_generate=cand.token_ids == out)
    return (t_ses - t_one) / max(1, cand.token_count - 1)


def hub_for(b: Bench, models: dict[str, str], strategies: dict[str, dict[str, Any]]) -> Any:
    from ensemblehub_core.config import parse_config
    from ensemblehub_core.hub import Hub

    members = [{"name": n, "model": f, "device": b.device, "dtype": b.dtype} for n, f in models.items()]
    ens = {}
    for name, strategy in strategies.items():
        e: dict[str, Any] = {"members": members, "strategy": strategy}
        if strategy["name"] == "segment":
            e["scorer"] = {"type": "likelihood", "member": "qwen"}
        ens[name] = e
    return Hub(parse_config({"ensembles": ens}))


class PassCounter:
    """Counts the forward passes each model runs and the tokens they take in (scorer passes included).

    Where a step is host-bound, as for models of these sizes on a GPU in eager mode, a pass costs about the same
    for 1 token as for a few hundred, so the number of passes, not the tokens, is what a decode loop pays for.
    """

    def __init__(self, models: dict[str, Any]) -> None:
        self.passes = dict.fromkeys(models, 0)
        self.tokens = dict.fromkeys(models, 0)
        self.handles = [m.register_forward_pre_hook(partial(self._count, name), with_kwargs=True)
                        for name, m in models.items()]

    def _count(self, name: str, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.passes[name] += 1
        self.tokens[name] += int(ids.numel()) if ids is not None else 0

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def bench_segment(b: Bench, models: dict[str, str]) -> None:
    seg = {"name": "segment", "segment_tokens": 16, "delimiters": [], "repetition_window": 0, "max_rounds": 64}
    hub = hub_for(b, models, {"kept": seg, "reencoded": {**seg, "incremental": False}})
    total = b.segment_total
    times = {}
    for name in ("kept", "reencoded"):
        ens = hub.ensemble(name)
        ens.generate(Q, max_tokens=32, temperature=0.0)  # warm-up
        counter = PassCounter({n: g.model for n, g in ens.members.items()})
        try:
            t, result = b.timed(partial(ens.generate, Q, max_tokens=total, temperature=0.0), runs=1, warm=0)
        finally:
            counter.close()
        times[name] = t
        rounds, passes = len(result.trace), sum(counter.passes.values())
        b.write("segment", mode=name, tokens=result.usage.completion_tokens, s=round(t, 3),
                accepted_tok_s=round(result.usage.completion_tokens / t, 2), rounds=rounds,
                passes=counter.passes, tokens_forwarded=counter.tokens,
                passes_per_round=round(passes / max(1, rounds), 2), ms_per_pass=round(1000 * t / max(1, passes), 2))
    b.write("segment_kept_vs_reencoded", speedup=round(times["reencoded"] / times["kept"], 3), goal=">= 1.3")


def bench_token_level(b: Bench, models: dict[str, str], own_step_s: float) -> None:
    hub = hub_for(b, models, {"gac": {"name": "gac"}, "unite": {"name": "unite"}})
    n = 16 if b.small else 64
    for name in ("gac", "unite"):
        ens = hub.ensemble(name)
        # Members that never end, so every run decodes all n tokens. Random weights leave the end tokens' logits
        # at 0 while the others spread around it; the union vocabulary pools all of a member's end tokens into
        # one entry, so with the end tokens kept `gac` stops after its first token and times nothing.
        for gen in ens.members.values():
            gen.eos_ids = set()
        ens.generate(Q, max_tokens=4, temperature=0.0)  # warm-up (builds the union vocabulary once)
        steps = []
        for _ in range(b.runs):
            b.sync()
            result = ens.generate(Q, max_tokens=n, temperature=0.0)
            if result.usage.completion_tokens < n:
                raise RuntimeError(f"{name} stopped after {result.usage.completion_tokens} of {n} tokens "
                                   f"({result.finish_reason}): its step time would not be measured")
            steps.append(result.extra["token_level"]["decode_step_s"])
        step = statistics.median(steps)
        b.write("token_level", strategy=name, tokens=n, step_ms=round(step * 1000, 2),
                members_own_steps_ms=round(own_step_s * 1000, 2), ratio=round(step / own_step_s, 3), goal="<= 1.3",
                overhead_step_ms=round(result.extra["token_level"]["overhead_step_s"] * 1000, 2))


def bench_batching(b: Bench, gen: Any) -> None:
    from ensemblehub_core.generators.base import SegmentRequest
    from ensemblehub_core.types import Message

    torch = b.torch
    n = b.tokens
    req = SegmentRequest(max_new_tokens=n)
    questions = [[Message(role="user", content=f"{Q} Part {i}.")] for i in range(32)]
    batcher = gen.continuous_batcher(32)
    if batcher is None:
        b.write("step_batcher", skipped="this model's cache rows cannot be merged")
        return

    async def streams(k: int) -> list[Any]:
        return list(await asyncio.gather(*(batcher.complete(q, "", req) for q in questions[:k])))

    try:
        single = None
        for k in (1, 8, 32):
            t, cands = b.timed(partial(_run_streams, streams, k), runs=max(1, b.runs - 1))
            tok_s = sum(c.token_count for c in cands) / t
            single = single or tok_s
            b.write("step_batcher", streams=k, tokens=n, tok_s=round(tok_s, 2), vs_one_stream=round(tok_s / single, 2))
    finally:
        batcher.close()
    prompts = [gen.encode_prompt(q) for q in questions]
    width = max(len(p) for p in prompts)
    pad = gen.tokenizer.pad_token_id or 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=b.device)
    mask = (torch.arange(width, device=b.device)[None, :] >= torch.tensor([width - len(p) for p in prompts],
                                                                           device=b.device)[:, None]).long()

    def generate() -> Any:
        with torch.inference_mode():
            return gen.model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                      eos_token_id=sorted(gen.eos_ids), pad_token_id=pad)

    t, out = b.timed(generate, runs=max(1, b.runs - 1))
    b.write("generate_batch", streams=32, tokens=n, tok_s=round(32 * (out.shape[1] - width) / t, 2))


def _run_streams(streams: Callable[[int], Any], k: int) -> Any:
    return asyncio.run(streams(k))


def bench_compiled(b: Bench, eager: Any) -> None:
    from ensemblehub_core.generators.base import SegmentRequest
    from ensemblehub_core.generators.hf import HFGenerator
    from ensemblehub_core.types import Message

    torch = b.torch
    gen = HFGenerator(f"{eager.name}-compiled", eager.loaded, compile=True, compile_max_len=1024)
    msgs = [Message(role="user", content=Q)]
    prompt = gen.encode_prompt(msgs)
    ids = torch.tensor([prompt], device=b.device)
    n = b.tokens
    t = time.perf_counter()
    asyncio.run(gen.complete(msgs, "", SegmentRequest(max_new_tokens=n)))
    b.write("compiled_warmup", member=gen.name, s=round(time.perf_counter() - t, 1))
    t_ses, cand = b.timed(lambda: asyncio.run(gen.complete(msgs, "", SegmentRequest(max_new_tokens=n))))

    from transformers import CompileConfig

    # transformers compiles `generate` by itself on CUDA only; elsewhere it must be told to, in the mode the
    # member's compiled step uses there (CUDA graphs exist on CUDA only).
    compile_config = None
    if not b.device.startswith("cuda"):
        compile_config = CompileConfig(mode="default")
        compile_config._compile_all_devices = True  # type: ignore[assignment]  # transformers types it None

    def generate() -> Any:
        with torch.inference_mode():
            return gen.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                      cache_implementation="static", compile_config=compile_config,
                                      eos_token_id=sorted(gen.eos_ids), pad_token_id=gen.tokenizer.pad_token_id)

    t = time.perf_counter()
    generate()
    b.write("compiled_generate_warmup", s=round(time.perf_counter() - t, 1))
    t_gen, out = b.timed(generate)
    gen_tokens = out.shape[1] - ids.shape[1]
    eager_cand = asyncio.run(eager.complete(msgs, "", SegmentRequest(max_new_tokens=n)))
    b.write("compiled_vs_compiled_generate", member=gen.name, tokens=n,
            session_tok_s=round(cand.token_count / t_ses, 2), generate_tok_s=round(gen_tokens / t_gen, 2),
            ratio=round((cand.token_count / t_ses) / (gen_tokens / t_gen), 3), goal=">= 0.8",
            fell_back=gen.compiled is None or gen.compiled.broken is not None,
            same_tokens_as_eager_session=cand.token_ids == eager_cand.token_ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny shapes and few tokens (a CPU dry run)")
    parser.add_argument("--deep", action="store_true",
                        help="the real depths at 64 wide, one thread, full token counts: a host-bound CPU proxy")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--out", default=None, help="folder for gpu_bench.jsonl (default: $OUT)")
    parser.add_argument("--only", default="session,segment,token,batch,compiled", help="which parts to run")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="start no part after this many seconds (the compiled part needs 120 s left)")
    args = parser.parse_args(argv)
    if args.deep and (args.small or args.device != "cpu"):
        parser.error("--deep is a CPU proxy: use it with --device cpu and without --small")
    b = Bench(args)
    torch = b.torch
    if b.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device; use --device cpu --small for a dry run", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if b.deep:
        torch.set_num_threads(1)  # one thread: what the host does per step, not how the CPU parallelises a matmul
    try:
        return measure(b, args)
    finally:
        torch.set_num_threads(threads)  # a caller in the same process (a test run) keeps its threads


def measure(b: Bench, args: argparse.Namespace) -> int:
    """Every part ``args.only`` names, in order, within ``args.budget_s``; 1 when any part failed."""
    torch = b.torch
    b.write("env", torch=torch.__version__, transformers=__import__("transformers").__version__,
            gpu=torch.cuda.get_device_name(0) if b.device.startswith("cuda") else None)
    models = build_models(b)
    parts = set(args.only.split(","))
    failures = 0
    qwen = member(b, models["qwen"], "qwen")
    smol = member(b, models["smol"], "smol")
    b.write("loaded", dtype=str(qwen.model.dtype), device=str(qwen.model.device))
    own = 0.0
    steps: list[tuple[str, Callable[[], Any]]] = []
    if "session" in parts or "token" in parts:
        def session_part() -> None:
            nonlocal own
            own = bench_session_vs_generate(b, qwen) + bench_session_vs_generate(b, smol)
        steps.append(("session", session_part))
    if "segment" in parts:
        steps.append(("segment", lambda: bench_segment(b, models)))
    if "token" in parts:
        steps.append(("token", lambda: bench_token_level(b, models, own)))
    if "batch" in parts:
        steps.append(("batch", lambda: bench_batching(b, qwen)))
    if "compiled" in parts:
        steps.append(("compiled", lambda: bench_compiled(b, qwen)))
    for name, fn in steps:
        left = args.budget_s - (time.perf_counter() - b.started)
        if left < (120 if name == "compiled" else 0):
            b.write("skipped", part=name, reason=f"time budget: {left:.0f} s left")
            continue
        try:
            fn()
        except Exception as exc:  # keep measuring the other parts; the failure is a result too
            failures += 1
            b.write("error", part=name, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-2000:])
    b.write("done", failures=failures, total_s=round(time.perf_counter() - b.started, 1))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
