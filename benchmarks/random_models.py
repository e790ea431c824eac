"""Random-weight models of real shapes, built from a folder that holds only a config and a tokenizer.

Machines without model weights (the GPU check machine has no network) can still measure real costs: the
architecture, vocabulary and tokenizer are real, the weights are random. The embedding rows of the end and
special tokens are zeroed, so their logits are 0 while the others spread around it and a greedy run goes on to
its full length instead of stopping at a random end token.

Used by ``benchmarks/gpu_bench.py`` and ``tests/gpu``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["QWEN_1_5B", "SMOL_1_7B", "TINY_QWEN", "TINY_SMOL", "build_random_model", "tok_root"]

#: Qwen2.5-1.5B's shape (on the Qwen2.5 tokenizer folder).
QWEN_1_5B: dict[str, Any] = {
    "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
    "num_key_value_heads": 2, "head_dim": 128, "tie_word_embeddings": True,
}
#: SmolLM2-1.7B's shape (on the SmolLM2 tokenizer folder).
SMOL_1_7B: dict[str, Any] = {
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
    "num_key_value_heads": 32, "head_dim": 64, "tie_word_embeddings": True,
}
#: Tiny shapes with the real vocabularies, for tests and CPU dry runs.
TINY_QWEN: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": False,
}
TINY_SMOL: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 4, "head_dim": 16, "tie_word_embeddings": True,
}


def tok_root() -> Path:
    """The folder with ``qwen/`` and ``smol/`` config + tokenizer folders: ``$ENSEMBLEHUB_GPU_TOK``, else
    ``.gpu/tok`` in the repository, else the shared copy next to the checkout."""
    import os

    env = os.environ.get("ENSEMBLEHUB_GPU_TOK")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[1]
    for candidate in (repo / ".gpu" / "tok", repo.parent / "shared" / "gpu" / "tok"):
        if (candidate / "qwen" / "config.json").exists():
            return candidate
    return repo / ".gpu" / "tok"


def build_random_model(tok_dir: str | Path, out_dir: str | Path, shape: dict[str, Any], *, dtype: str = "bfloat16",
                       device: str = "cpu", seed: int = 0) -> Path:
    """Build a random-weight model of ``shape`` on the config and tokenizer in ``tok_dir``; save it to ``out_dir``.

    Args:
        tok_dir: A folder with ``config.json`` and the tokenizer files (no weights).
        out_dir: Where the model folder is written (config, weights, tokenizer); reused when already complete.
        shape: Config fields to override (hidden size, layers, heads, ...).
        dtype: The dtype the weights are saved in.
        device: Where the weights are initialised (a GPU builds a 1.5B model in seconds).
        seed: Seed of the random initialisation.

    Returns:
        ``out_dir``.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok_dir, out = Path(tok_dir), Path(out_dir)
    marker = out / "random_model.json"
    wanted = {"shape": shape, "dtype": dtype, "seed": seed, "from": str(tok_dir)}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return out
    raw = json.loads((tok_dir / "config.json").read_text())
    raw.update(shape)
    raw.pop("layer_types", None)  # rebuilt for the new layer count
    raw["max_window_layers"] = raw["num_hidden_layers"]
    raw.pop("_model_name_or_path", None)
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    special = set(tokenizer.all_special_ids)
    for eos in (raw.get("eos_token_id"), getattr(model.generation_config, "eos_token_id", None)):
        special |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    with torch.no_grad():
        ids = torch.tensor(sorted(i for i in special if 0 <= i < config.vocab_size), device=device)
        model.get_output_embeddings().weight[ids] = 0  # tied models: the input rows too
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for f in tok_dir.iterdir():
        if f.is_file() and f.name != "config.json":
            shutil.copy(f, out / f.name)
    marker.write_text(json.dumps(wanted))
    del model
    return out
