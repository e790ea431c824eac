"""GPU tests: random-weight models of the real Qwen2.5 and SmolLM2 configs and tokenizers, on CUDA.

Every test here is marked ``gpu`` and skipped when torch sees no CUDA device (or the config + tokenizer folders,
``.gpu/tok`` or ``$ENSEMBLEHUB_GPU_TOK``, are missing), so the folder passes as skipped on a CPU-only machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _why_skip() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device"
    from benchmarks.random_models import tok_root

    if not (tok_root() / "qwen" / "config.json").exists():
        return f"no config + tokenizer folders under {tok_root()} (copy ../shared/gpu/tok to .gpu/tok)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    reason = None
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.gpu)
            reason = reason or _why_skip() or ""
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight models on the real vocabularies: float32 (exact comparisons) and bfloat16."""
    from benchmarks.random_models import TINY_QWEN, TINY_SMOL, build_random_model, tok_root

    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, shape in (("qwen", TINY_QWEN), ("smol", TINY_SMOL)):
        for dtype in ("float32", "bfloat16"):
            out[f"{name}-{dtype}"] = build_random_model(tok_root() / name, root / f"{name}-{dtype}", shape,
                                                        dtype=dtype, device="cuda")
    return out
