"""`benchmarks/gpu_bench.py` on its CPU proxy (`--deep`): every token-level row times the tokens it asked for.

Random-weight members leave their end tokens' logits at 0 while the others spread around it; `gac` pools a
member's end tokens into one entry and used to stop after its first token, so the benchmark timed nothing and
printed a ratio of 0. The benchmark now runs members that never end and refuses a short run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def _tok_folders(root: Path) -> Path:
    """``qwen/`` and ``smol/`` config + tokenizer folders (no weights) from the embedded Qwen2.5 and SmolLM2."""
    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.pool import ModelPool

    for name, source in (("qwen", "embedded:qwen2.5-coder-0.5b-instruct"), ("smol", "embedded:smollm2-135m-instruct")):
        loaded = ModelPool.default().get(ModelSpec(source=source))
        loaded.model.config.save_pretrained(root / name)
        loaded.tokenizer.save_pretrained(root / name)
    return root


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> list[dict[str, Any]]:
    """gpu_bench's rows from one run with ``args``, which must succeed."""
    from benchmarks import gpu_bench
    from benchmarks.random_models import tok_root

    if not (tok_root() / "qwen" / "config.json").exists():  # the GPU machine's folders, else the embedded models'
        monkeypatch.setenv("ENSEMBLEHUB_GPU_TOK", str(_tok_folders(tmp_path / "tok")))
    monkeypatch.setenv("ENSEMBLEHUB_GPU_MODELS", str(tmp_path / "models"))
    out = tmp_path / "out"
    rc = gpu_bench.main(["--device", "cpu", *args, "--runs", "1", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "gpu_bench.jsonl").read_text().splitlines()]
    errors = [r for r in rows if r["name"] == "error"]
    assert rc == 0 and not errors, errors
    return rows


def test_token_level_rows_time_every_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    threads = torch.get_num_threads()
    rows = _run(tmp_path, monkeypatch, "--deep", "--only", "token")
    token = {r["strategy"]: r for r in rows if r["name"] == "token_level"}
    assert set(token) == {"gac", "unite"}
    for row in token.values():
        assert row["step_ms"] > 0 and row["ratio"] > 0
    assert torch.get_num_threads() == threads  # the proxy's one thread does not outlive it


def test_segment_rows_count_passes_and_kept_caches_forward_fewer_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _run(tmp_path, monkeypatch, "--small", "--only", "segment")
    seg = {r["mode"]: r for r in rows if r["name"] == "segment"}
    kept, again = seg["kept"], seg["reencoded"]
    assert kept["tokens"] == again["tokens"] == 32 and kept["rounds"] == again["rounds"] == 2
    # Keeping caches saves tokens, not passes: each round every member runs one pass per token it writes
    # either way (the scorer's passes, on qwen, too), and re-encoding runs the whole prefix in the first.
    assert kept["passes"] == again["passes"]
    assert kept["passes"]["smol"] == 32 and kept["passes"]["qwen"] > 32
    for name in ("qwen", "smol"):
        assert kept["tokens_forwarded"][name] < again["tokens_forwarded"][name]
