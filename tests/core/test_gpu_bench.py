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


def _tok_folders(root: Path) -> Path:
    """``qwen/`` and ``smol/`` config + tokenizer folders (no weights) from the embedded Qwen2.5 and SmolLM2."""
    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.pool import ModelPool

    for name, source in (("qwen", "embedded:qwen2.5-coder-0.5b-instruct"), ("smol", "embedded:smollm2-135m-instruct")):
        loaded = ModelPool.default().get(ModelSpec(source=source))
        loaded.model.config.save_pretrained(root / name)
        loaded.tokenizer.save_pretrained(root / name)
    return root


def test_token_level_rows_time_every_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from benchmarks import gpu_bench
    from benchmarks.random_models import tok_root

    if not (tok_root() / "qwen" / "config.json").exists():  # the GPU machine's folders, else the embedded models'
        monkeypatch.setenv("ENSEMBLEHUB_GPU_TOK", str(_tok_folders(tmp_path / "tok")))
    monkeypatch.setenv("ENSEMBLEHUB_GPU_MODELS", str(tmp_path / "models"))
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    rc = gpu_bench.main(["--device", "cpu", "--deep", "--only", "token", "--runs", "1", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "gpu_bench.jsonl").read_text().splitlines()]
    errors = [r for r in rows if r["name"] == "error"]
    assert rc == 0 and not errors, errors
    token = {r["strategy"]: r for r in rows if r["name"] == "token_level"}
    assert set(token) == {"gac", "unite"}
    for row in token.values():
        assert row["step_ms"] > 0 and row["ratio"] > 0
    assert torch.get_num_threads() == threads  # the proxy's one thread does not outlive it
