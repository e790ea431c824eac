"""Failover through the real LiteLLM proxy: a replica SIGKILLed mid-load loses no request (a short run of
benchmarks/failover_bench.py, whose full run is part of ``make bench``)."""

from __future__ import annotations

import argparse

import pytest

pytest.importorskip("openai")


@pytest.mark.slow
def test_a_replica_killed_mid_load_loses_no_request() -> None:
    from benchmarks.failover_bench import run

    result = run(argparse.Namespace(member="fake", requests=90, clients=6, max_tokens=8, work_ms=50, down_s=1.0))
    assert (result["answered"], result["lost"]) == (90, 0), result["lost_errors"]
    assert result["latency"]["before"]["n"] > 0 and result["latency"]["during"]["n"] > 0
    assert result["served_by_replica"]["B"] > 0
