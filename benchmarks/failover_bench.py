"""Failover benchmark: two ``ensemblehub serve`` replicas behind the real LiteLLM proxy; one is SIGKILLed mid-load.

    python -m benchmarks.failover_bench                   # 480 requests, 8 clients, fake member (about a minute)
    python -m benchmarks.failover_bench --member smollm2  # the same over SmolLM2-135M (slower on a small CPU)

Topology (all on 127.0.0.1, as docs/deploy.md describes for real machines): replicas A and B each serve the same
one-member ensemble; the LiteLLM proxy routes the model name to both (two deployments of one model group,
``num_retries`` 6, a failed deployment cooled down at once for 5 s). Several clients send a bounded number of chat
requests to the proxy, one at a time each, with no retries of their own (the OpenAI client with
``max_retries=0``), so any request the router does not save counts as lost. When a third of the requests are
done, replica A is killed with SIGKILL (no drain: the worst case), started again after ``--down-s`` seconds on
the same port, and serves again once its ``/status`` is ready.

Reported: requests answered and lost, and latency (p50/p95/max) of the requests started before the kill,
between the kill and A being ready again ("during"), and after. The default member is a fake (a function that
waits ``--work-ms`` and answers), since the point is the router and the replicas, not the model; ``--member
smollm2`` serves SmolLM2-135M-Instruct instead. Writes benchmarks/results/failover.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.types import Message
from ensemblehub_integrations.server.threaded import free_port, stop_process, wait_until_up

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "answerer"
QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?", "Who wrote Hamlet?"]
PROXY_START_S = 300  # importing the proxy takes tens of seconds on a busy 2-core machine


async def fake_answer(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """The fake member: waits like a remote model would (``FAILOVER_WORK_MS``), then answers."""
    await asyncio.sleep(float(os.environ.get("FAILOVER_WORK_MS", "50")) / 1000)
    return "The capital of France is Paris."


def _replica_config(path: Path, member: str) -> None:
    if member == "fake":
        spec = '{name: m, backend: function, options: {fn: "benchmarks.failover_bench:fake_answer"}}'
    else:
        spec = '{name: m, model: "embedded:smollm2-135m-instruct", dtype: bfloat16}'
    path.write_text(
        f"ensembles:\n  {MODEL}:\n    members:\n      - {spec}\n    strategy: single\n"
        "server:\n  max_pending: 64\n  shutdown_grace_s: 5\n", encoding="utf-8")


def _proxy_config(path: Path, ports: Sequence[int]) -> None:
    deployments = "".join(
        f"  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{port}/v1\n      api_key: unused\n" for port in ports)
    path.write_text(
        "model_list:\n" + deployments +
        "router_settings:\n"
        "  routing_strategy: simple-shuffle\n"
        "  num_retries: 6          # retries go out at once, each to a replica drawn afresh\n"
        "  timeout: 60\n"
        "  allowed_fails: 0        # a replica that fails ...\n"
        "  cooldown_time: 5        # ... is left out for 5 s, then tried again\n"
        "general_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\n", encoding="utf-8")


@dataclass(kw_only=True)
class Replica:
    port: int
    config: Path
    log_dir: Path
    member: str
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = (self.log_dir / f"replica-{self.port}-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ensemblehub_core.cli", "serve", "--config", str(self.config),
             "--port", str(self.port)], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        wait_until_up(f"http://127.0.0.1:{self.port}/status", process=self.proc, timeout_s=300, interval_s=0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def served(self, start: int) -> int:
        """Chat requests this replica's ``start``-th process answered (from its access log)."""
        log = self.log_dir / f"replica-{self.port}-{start}.log"
        return log.read_text(errors="replace").count("POST /v1/chat/completions HTTP/1.1\" 200")


@dataclass(kw_only=True)
class Outcome:
    started: float
    ended: float
    ok: bool
    error: str = ""


def _stats(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {"n": len(values), "p50_s": round(statistics.median(ordered), 4), "p95_s": round(p95, 4),
            "max_s": round(ordered[-1], 4)}


async def _load(proxy: str, key: str, *, requests: int, clients: int, max_tokens: int, kill_after: int,
                victim: Replica, down_s: float) -> tuple[list[Outcome], dict[str, float]]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=proxy, api_key=key, max_retries=0, timeout=120)
    outcomes: list[Outcome] = []
    marks: dict[str, float] = {}
    issued = 0
    done = asyncio.Event()
    killed = asyncio.Event()

    async def one_client(c: int) -> None:
        nonlocal issued
        while issued < requests:
            i = issued
            issued += 1
            t0 = time.perf_counter()
            try:
                r = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                    max_tokens=max_tokens, temperature=0)
                ok = bool(r.choices and r.choices[0].message.content)
                outcomes.append(Outcome(started=t0, ended=time.perf_counter(), ok=ok, error="" if ok else "empty"))
            except Exception as exc:  # a lost request: recorded, the load goes on
                outcomes.append(Outcome(started=t0, ended=time.perf_counter(), ok=False,
                                        error=f"{type(exc).__name__}: {str(exc)[:200]}"))
            if len(outcomes) >= kill_after:
                killed.set()
        if len(outcomes) >= requests:
            done.set()

    async def controller() -> None:
        await killed.wait()
        marks["kill"] = time.perf_counter()
        await asyncio.to_thread(victim.kill)
        await asyncio.sleep(down_s)
        marks["restart"] = time.perf_counter()
        victim.start()
        await asyncio.to_thread(victim.wait_ready)
        marks["ready"] = time.perf_counter()

    marks["begin"] = time.perf_counter()
    ctl = asyncio.create_task(controller())
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    marks["end"] = time.perf_counter()
    if not ctl.done():  # the load ended first: still bring the replica back, so "after" is defined
        await ctl
    await client.close()
    return outcomes, marks


def run(args: argparse.Namespace) -> dict[str, Any]:
    key = f"sk-{secrets.token_hex(16)}"
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
        tmp_path = Path(tmp)
        cfg = tmp_path / "replica.yaml"
        _replica_config(cfg, args.member)
        os.environ["FAILOVER_WORK_MS"] = str(args.work_ms)
        replicas = [Replica(port=free_port(), config=cfg, log_dir=tmp_path, member=args.member) for _ in range(2)]
        proxy_cfg = tmp_path / "proxy.yaml"
        _proxy_config(proxy_cfg, [r.port for r in replicas])
        proxy_port = free_port()
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": key}
        proxy_log = (tmp_path / "proxy.log").open("wb")
        proxy = subprocess.Popen(
            [str(Path(sys.executable).with_name("litellm")), "--config", str(proxy_cfg), "--host", "127.0.0.1",
             "--port", str(proxy_port)], env=env, cwd=tmp_path, stdout=proxy_log, stderr=subprocess.STDOUT)
        try:
            for r in replicas:
                r.start()
            for r in replicas:
                r.wait_ready()
            base = f"http://127.0.0.1:{proxy_port}"
            try:
                wait_until_up(f"{base}/health/liveliness", process=proxy, timeout_s=PROXY_START_S)
            except RuntimeError as exc:
                tail = (tmp_path / "proxy.log").read_text()[-3000:]
                raise SystemExit(f"the proxy did not start: {exc}\n{tail}") from None
            # Warm-up through the proxy (its first request sets up its clients), not measured.
            warm = asyncio.run(_warm(base, key, args.max_tokens))
            print(f"replicas on {[r.port for r in replicas]}, proxy on {proxy_port}; warm-up {warm:.2f}s",
                  file=sys.stderr)
            outcomes, marks = asyncio.run(_load(
                base, key, requests=args.requests, clients=args.clients, max_tokens=args.max_tokens,
                kill_after=args.requests // 3, victim=replicas[0], down_s=args.down_s))
            served = {"A_before_kill": replicas[0].served(1), "A_after_restart": replicas[0].served(2),
                      "B": replicas[1].served(1)}
        finally:
            for r in replicas:
                if r.proc is not None and r.proc.poll() is None:
                    stop_process(r.proc, timeout_s=10)
            stop_process(proxy, timeout_s=10)
            proxy_log.close()
    phases: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    for o in outcomes:
        if not o.ok:
            continue
        phase = ("before" if o.started < marks["kill"] else
                 "during" if o.started < marks.get("ready", float("inf")) else "after")
        phases[phase].append(o.ended - o.started)
    lost = [o.error for o in outcomes if not o.ok]
    stats = {k: _stats(v) for k, v in phases.items()}
    before, during = stats["before"].get("p95_s"), stats["during"].get("p95_s")
    return {
        "member": args.member, "work_ms": args.work_ms if args.member == "fake" else None,
        "requests": args.requests, "clients": args.clients, "max_tokens": args.max_tokens,
        "answered": sum(o.ok for o in outcomes), "lost": len(lost), "lost_errors": lost[:10],
        "kill_at_s": round(marks["kill"] - marks["begin"], 2), "down_s": args.down_s,
        "ready_again_at_s": round(marks["ready"] - marks["begin"], 2) if "ready" in marks else None,
        "load_s": round(marks["end"] - marks["begin"], 2), "latency": stats,
        "p95_during_over_before": round(during / before, 2) if before and during else None,
        "served_by_replica": served, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


async def _warm(base: str, key: str, max_tokens: int) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base, api_key=key, max_retries=0, timeout=300)
    t0 = time.perf_counter()
    for q in QUESTIONS:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}],
                                             max_tokens=max_tokens)
    await client.close()
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--member", choices=["fake", "smollm2"], default="fake")
    p.add_argument("--requests", type=int, default=480)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--work-ms", type=float, default=50, help="the fake member's time per answer")
    p.add_argument("--down-s", type=float, default=2.0, help="how long the killed replica stays down")
    args = p.parse_args(argv)
    # A SIGTERM (a timeout, Ctrl-C's cousin) still stops the replicas and the proxy this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("failover.json" if args.member == "fake" else f"failover-{args.member}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    lat = result["latency"]
    print(f"\nfailover: {result['requests']} requests, {result['clients']} clients, member {result['member']}; "
          f"replica A SIGKILLed at {result['kill_at_s']}s, ready again at {result['ready_again_at_s']}s")
    print(f"answered {result['answered']}, lost {result['lost']}")
    print("| phase | n | p50 s | p95 s | max s |\n|---|---|---|---|---|")
    for phase in ("before", "during", "after"):
        s = lat[phase]
        print(f"| {phase} | {s['n']} | {s.get('p50_s', '-')} | {s.get('p95_s', '-')} | {s.get('max_s', '-')} |")
    print(f"p95 during / before: {result['p95_during_over_before']}; served: {result['served_by_replica']}")
    print(f"-> {out}")
    goal = result["lost"] == 0 and result["requests"] >= 200 and (result["p95_during_over_before"] or 99) <= 3
    print("goal (0 lost of >= 200, p95 during <= 3x before): " + ("met" if goal else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
