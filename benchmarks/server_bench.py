"""Server benchmark: batching throughput, and a bounded load run with the server's memory before and after.

    python -m benchmarks.server_bench                 # full sizes (~3-5 minutes on 2 cores)
    python -m benchmarks.server_bench --quick         # small sizes, for a smoke run

The server runs as a separate process (``ensemblehub serve`` on 127.0.0.1, a free port) over the embedded
SmolLM2-135M-Instruct alone (strategy ``single``, so concurrent requests are batched). Two measurements:

1. Throughput: completion tokens per second with 1 client, then with 8 concurrent clients, same requests.
2. Load: N requests from 16 concurrent clients with a deliberately small queue (``max_pending``): every
   response must be an answer (200) or a clear refusal (429/503 in OpenAI's error shape, with Retry-After);
   none lost (no connection error, timeout or other status). Clients honour Retry-After and try a refused
   request again (up to 100 times), as the OpenAI client does. Three runs in a row (``--load-runs``); the
   server's RSS is read after warm-up and after each run, and should stay flat (at most +5% after the last).

Prints a table and writes benchmarks/results/server.json. Every request goes to 127.0.0.1 only; request loops
are bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
import psutil

from ensemblehub_integrations.server.threaded import free_port, stop_process, wait_until_up

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2-135m"
QUESTIONS = [
    "What is the capital of France?", "Name a primary colour.", "What is 2 + 2?", "Say hello in Spanish.",
    "What is the largest planet?", "Name a fruit that is yellow.", "What do bees make?", "Who wrote Hamlet?",
    "What is the boiling point of water in Celsius?", "Name an animal that can fly.",
]


def _config(path: Path, *, max_pending: int, dtype: str) -> None:
    path.write_text(
        "ensembles:\n"
        f"  {MODEL}:\n"
        "    members:\n"
        f"      - {{name: smol, model: \"embedded:smollm2-135m-instruct\", dtype: {dtype}}}\n"
        "    strategy: single\n"
        "server:\n"
        f"  max_pending: {max_pending}\n"
        "  max_batch_size: 8\n"
        "  batch_window_ms: 10\n",
        encoding="utf-8",
    )


class ServerProcess:
    """``ensemblehub serve`` in a child process, waited for until ``/status`` says ready."""

    def __init__(self, config: Path, log: Path, threads: int | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("ensemblehub")
        cmd = [str(exe), "serve", "--config", str(config), "--port", str(self.port)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("ENSEMBLEHUB_API_KEY", None)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until_up(f"{self.url}/status", process=self.proc, timeout_s=600, interval_s=0.5)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"the server did not start: {exc}\n{log.read_text(errors='replace')[-3000:]}") from exc

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=30)


async def _client(url: str, jobs: asyncio.Queue[int], max_tokens: int, out: list[dict[str, Any]]) -> None:
    async with httpx2.AsyncClient(base_url=url, timeout=300) as http:
        while True:
            try:
                i = jobs.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = {"model": MODEL, "max_tokens": max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
            t0 = time.perf_counter()
            row: dict[str, Any] = {"i": i, "refusals": 0, "bad_refusals": 0}
            for _ in range(100):  # bounded: a request refused 100 times counts as refused
                try:
                    r = await http.post("/v1/chat/completions", json=body)
                except Exception as exc:  # a lost request: recorded, not raised
                    row["status"], row["error"] = None, f"{type(exc).__name__}: {exc}"
                    break
                row["status"] = r.status_code
                data = r.json()
                if r.status_code not in (429, 503):
                    if r.status_code == 200:
                        row["tokens"] = data["usage"]["completion_tokens"]
                    else:
                        row["error"] = r.text[:300]
                    break
                row["refusals"] += 1
                clear = data.get("error", {}).get("code") and r.headers.get("retry-after")
                row["bad_refusals"] += not clear
                await asyncio.sleep(float(r.headers.get("retry-after") or 1))
            row["latency_s"] = time.perf_counter() - t0
            out.append(row)


async def _run(url: str, *, requests: int, clients: int, max_tokens: int) -> dict[str, Any]:
    jobs: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        jobs.put_nowait(i)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(url, jobs, max_tokens, rows) for _ in range(clients)))
    wall = time.perf_counter() - t0
    ok = [r for r in rows if r["status"] == 200]
    refused = [r for r in rows if r["status"] in (429, 503)]
    lost = [r for r in rows if r not in ok and r not in refused] + [r for r in rows if r["bad_refusals"]]
    tokens = sum(r["tokens"] for r in ok)
    latencies = sorted(r["latency_s"] for r in ok) or [0.0]
    return {"requests": requests, "clients": clients, "max_tokens": max_tokens, "wall_s": round(wall, 2),
            "answered": len(ok), "refused": len(refused), "lost": len(lost), "completion_tokens": tokens,
            "refusals_429_503": sum(r["refusals"] for r in rows), "requests_lost_in_total": requests - len(rows),
            "tokens_per_s": round(tokens / wall, 2), "p50_latency_s": round(latencies[len(latencies) // 2], 2),
            "max_latency_s": round(latencies[-1], 2), "lost_detail": lost[:5]}


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    print(f"\n## {title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--load-requests", type=int, default=200)
    p.add_argument("--load-tokens", type=int, default=8, help="max_tokens of each load-run request")
    p.add_argument("--max-pending", type=int, default=12, help="the server's queue bound in the load run")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the server (default: torch's own choice)")
    p.add_argument("--dtype", default="bfloat16", help="the member's dtype (the embedded default: bfloat16)")
    p.add_argument("--load-runs", type=int, default=3, help="consecutive load runs (RSS read after each)")
    p.add_argument("--no-load", action="store_true", help="measure throughput only")
    p.add_argument("--output", default=str(RESULTS / "server.json"))
    args = p.parse_args(argv)
    per_client = 2 if args.quick else 4
    load_n = 40 if args.quick else args.load_requests
    # A terminated benchmark still stops its server (the finally below runs on SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_avg_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.yaml"
        _config(cfg, max_pending=args.max_pending, dtype=args.dtype)
        started = time.perf_counter()
        server = ServerProcess(cfg, Path(tmp) / "server.log", args.threads)
        load_s = time.perf_counter() - started
        try:
            _say(f"server ready in {load_s:.0f} s; warming up")
            asyncio.run(_run(server.url, requests=4, clients=4, max_tokens=8))
            _say("1 client")
            one = asyncio.run(_run(server.url, requests=per_client * 2, clients=1, max_tokens=args.max_tokens))
            _say(f"  {one['tokens_per_s']} tokens/s; 8 clients")
            eight = asyncio.run(_run(server.url, requests=per_client * 8, clients=8, max_tokens=args.max_tokens))
            _say(f"  {eight['tokens_per_s']} tokens/s; load run")
            rss = [server.rss_mb()]
            runs: list[dict[str, Any]] = []
            for k in range(0 if args.no_load else args.load_runs):
                runs.append(asyncio.run(_run(server.url, requests=load_n, clients=16, max_tokens=args.load_tokens)))
                rss.append(server.rss_mb())
                r = runs[-1]
                _say(f"  load run {k + 1}: {r['answered']} answered, {r['refused']} refused, {r['lost']} lost; "
                     f"RSS {rss[-1]:.0f} MB")
        finally:
            server.stop()
    speedup = eight["tokens_per_s"] / one["tokens_per_s"] if one["tokens_per_s"] else 0.0
    table("Throughput: completion tokens/s, 1 client vs 8 concurrent clients (batched decoding)",
          ["clients", "requests", "tokens", "wall s", "tokens/s", "p50 latency s"],
          [[r["clients"], r["requests"], r["completion_tokens"], r["wall_s"], r["tokens_per_s"],
            r["p50_latency_s"]] for r in (one, eight)])
    print(f"speed-up with 8 clients: {speedup:.2f}x")
    table(f"Load: {load_n} requests from 16 clients, queue bound {args.max_pending} (429s retried after Retry-After)",
          ["run", "answered", "refused at last", "lost", "429/503 responses", "tokens/s", "max latency s",
           "server RSS MB"],
          [[k + 1, r["answered"], r["refused"], r["lost"], r["refusals_429_503"], r["tokens_per_s"],
            r["max_latency_s"], f"{rss[k]:.0f} -> {rss[k + 1]:.0f}"] for k, r in enumerate(runs)])
    lost = sum(r["lost"] for r in runs)
    growth = rss[-1] / rss[0] - 1
    if runs:
        goal = lost == 0 and growth <= 0.05 and len(runs) >= 3 and load_n >= 200
        print(f"RSS after {len(runs)} load runs / after warm-up: {rss[-1] / rss[0]:.3f}x; lost {lost}")
        print("goal (0 lost, RSS <= +5% after 3 runs of >= 200 requests / 16 clients): "
              + ("met" if goal else "NOT met"))
    out = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "server_threads": args.threads,
                    "load_avg_start": load_avg_start, "load_avg_end": os.getloadavg()},
        "model": f"embedded:smollm2-135m-instruct, {args.dtype} (strategy single, batched)",
        "server_start_s": round(load_s, 1),
        "throughput": {"one_client": one, "eight_clients": eight, "speedup": round(speedup, 2)},
        "load": {"runs": runs, "rss_mb": [round(x, 1) for x in rss], "rss_growth": round(growth, 4)},
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(out, indent=2), encoding="utf-8")
    print(f"\nwrote {output}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
