"""`benchmarks/gpu_bench.py` on its CPU proxy (`--deep`): every token-level row times the tokens it asked for.

Random-weight members leave their end tokens' logits at 0 while the others spread around it; `gac` pools a
member's end tokens into one entry and used to stop after its first token, so the benchmark timed nothing and
printed a ratio of 0. The benchmark now runs members that never end and refuses a short run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_token_level_rows_time_every_token(tmp_path: Path) -> None:
    from benchmarks import gpu_bench
    from benchmarks.random_models import tok_root

    if not (tok_root() / "qwen" / "config.json").exists():
        pytest.skip(f"no config + tokenizer folders under {tok_root()} (copy ../shared/gpu/tok to .gpu/tok)")
    rc = gpu_bench.main(["--device", "cpu", "--deep", "--only", "token", "--runs", "1", "--out", str(tmp_path)])
    rows = [json.loads(line) for line in (tmp_path / "gpu_bench.jsonl").read_text().splitlines()]
    errors = [r for r in rows if r["name"] == "error"]
    assert rc == 0 and not errors, errors
    token = {r["strategy"]: r for r in rows if r["name"] == "token_level"}
    assert set(token) == {"gac", "unite"}
    for row in token.values():
        assert row["step_ms"] > 0 and row["ratio"] > 0
