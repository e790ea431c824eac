"""`load_model`: from a `ModelSpec` to weights and tokenizer in memory, ready for inference.

Every failure of torch, transformers or the file system is mapped here, once, to `ModelLoadError` with a
message that names the source and says what to do.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ensemblehub_core.exceptions import ConfigError, ModelLoadError
from ensemblehub_core.models.convert import ensure_converted, require_hf
from ensemblehub_core.models.embedded import EMBEDDED_MODELS
from ensemblehub_core.models.sources import ResolvedSource, resolve_source, safe_name

__all__ = [
    "END_OF_TURN_TOKENS", "LoadedModel", "ModelSpec", "auto_dtype", "collect_eos_token_ids", "cpu_has_native_bf16",
    "end_of_turn_id", "load_model",
]

logger = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float32", "float16", "auto")
KINDS = ("causal_lm", "token_classification", "sequence_classification", "auto")
_DEVICE_RE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")

#: Special tokens that end a turn in the chat formats of common model families.
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>", "</s>")

_AUTO_CLASSES = {
    "causal_lm": "AutoModelForCausalLM",
    "token_classification": "AutoModelForTokenClassification",
    "sequence_classification": "AutoModelForSequenceClassification",
    "auto": "AutoModel",
}
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
_DEFAULT_CONTEXT = 2048


@dataclass(kw_only=True, frozen=True)
class ModelSpec:
    """What to load and how; equal specs share one loaded copy in a `ModelPool`.

    Attributes:
        source: ``embedded:NAME``, a ``.gguf`` file, a local folder or a hub id (see `resolve_source`).
        dtype: ``bfloat16``, ``float32``, ``float16`` or ``auto`` (the fastest for the hardware, see
            `auto_dtype`).
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA when available, else CPU).
        kind: Head to load: ``causal_lm``, ``token_classification``, ``sequence_classification`` or
            ``auto`` (a bare ``AutoModel``, e.g. for remote-code reward models).
        trust_remote_code: Passed to transformers.
        gguf_file: The GGUF file inside a hub repository or a folder that holds several.
    """

    source: str
    # auto, not bfloat16: on a CPU without native bf16 a bf16 matmul runs tens of times slower than float32
    dtype: str = "auto"
    device: str = "cpu"
    kind: str = "causal_lm"
    trust_remote_code: bool = False
    gguf_file: str | None = None

    def __post_init__(self) -> None:
        if not self.source or not self.source.strip():
            raise ConfigError("model source is empty; use embedded:NAME, a .gguf file, a folder or a hub id")
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("kind", self.kind, KINDS)
        if not _DEVICE_RE.match(self.device):
            raise ConfigError(f"unknown device '{self.device}'; use cpu, cuda, cuda:N, mps or auto")


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {what} '{value}'; allowed: {', '.join(allowed)}")


@dataclass(kw_only=True)
class LoadedModel:
    """A model in memory with what generators need to know about it.

    Attributes:
        spec: The spec it was loaded from.
        model: The torch module, in eval mode on ``spec.device``, gradients off.
        tokenizer: Its transformers tokenizer (``pad_token`` set, to EOS when the checkpoint has none).
        path: The folder it was loaded from (the converted cache folder for GGUF sources; the hub id for a
            hub model loaded from the Hugging Face cache).
        eos_token_ids: Every token id that ends a turn.
        context_length: Maximum positions from the config (2048 when the config does not say).
        has_chat_template: Whether the tokenizer carries a chat template.
    """

    spec: ModelSpec
    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    path: str
    eos_token_ids: list[int]
    context_length: int
    has_chat_template: bool


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load ``spec``'s weights and tokenizer (converting a GGUF once into the cache first).

    Raises:
        ConfigError: an unknown embedded name or an invalid spec.
        ModelLoadError: anything else that stops the model from loading; the message says what to do.
    """
    torch, transformers = require_hf()
    resolved = resolve_source(spec.source, spec.gguf_file)
    started = time.perf_counter()
    device = _pick_device(torch, spec)
    folder, local_only = _folder_for(resolved, spec)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            folder, trust_remote_code=spec.trust_remote_code, local_files_only=local_only
        )
        auto_class = getattr(transformers, _AUTO_CLASSES[spec.kind])
        model = auto_class.from_pretrained(
            folder,
            dtype=getattr(torch, _concrete_dtype(spec, device)),
            trust_remote_code=spec.trust_remote_code,
            local_files_only=local_only,
        )
        model.to(device)
    except Exception as exc:  # transformers raises anything from OSError to KeyError; map them all once
        raise _load_error(spec, resolved, exc, local_only) from exc
    model.eval()
    model.requires_grad_(False)
    loaded = _describe(spec, model, tokenizer, folder)
    logger.info("loaded %s from %s in %.1f s", spec.source, folder, time.perf_counter() - started)
    return loaded


def _describe(spec: ModelSpec, model: Any, tokenizer: Any, folder: str) -> LoadedModel:
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        path=folder,
        eos_token_ids=collect_eos_token_ids(tokenizer, getattr(model, "generation_config", None)),
        context_length=context_length(model.config),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
    )


def model_folder(spec: ModelSpec) -> str:
    """The folder of transformers-format weights for ``spec`` (a GGUF source is converted once first), or its
    hub id; for engines that load weights themselves (vLLM).

    Raises:
        ConfigError: an unknown embedded name or an invalid spec.
    """
    return _folder_for(resolve_source(spec.source, spec.gguf_file), spec)[0]


def _folder_for(resolved: ResolvedSource, spec: ModelSpec) -> tuple[str, bool]:
    """The folder (or hub id) to hand to from_pretrained, and whether to stay off the network."""
    if resolved.kind == "folder":
        assert resolved.path is not None
        return str(resolved.path), True
    if resolved.kind == "hub" and resolved.gguf_file is None:
        return resolved.source, not _hub_reachable()
    if resolved.kind == "hub":
        resolved = _download_gguf(resolved)
    if spec.kind != "causal_lm" and spec.kind != "auto":
        # GGUF files hold language models; another head would be randomly initialised, silently.
        raise ConfigError(f"model '{spec.source}': a GGUF source can only load as kind causal_lm or auto")
    return str(ensure_converted(resolved)), True


def _download_gguf(resolved: ResolvedSource) -> ResolvedSource:
    """Fetch (or find in the Hugging Face cache) one GGUF file of a hub repository."""
    assert resolved.gguf_file is not None
    reachable = _hub_reachable()
    try:
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(resolved.source, resolved.gguf_file, local_files_only=not reachable)
    except Exception as exc:  # huggingface_hub raises its own tree plus OSError and ValueError
        if not reachable:
            detail = f" (file {resolved.gguf_file})"
            raise ModelLoadError(_not_found_message(resolved.source, detail)) from exc
        raise ModelLoadError(
            f"could not fetch '{resolved.gguf_file}' from hub repository '{resolved.source}': {exc}; "
            "check the repository id and the file name"
        ) from exc
    name = safe_name(f"{resolved.source}-{Path(resolved.gguf_file).stem}")
    return ResolvedSource(source=resolved.source, kind="gguf", name=name, path=Path(local))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (fails in ms, where transformers retries for 50 s)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _not_found_message(source: str, detail: str = "") -> str:
    embedded = ", ".join(f"embedded:{name}" for name in EMBEDDED_MODELS)
    return (
        f"model '{source}'{detail} was not found locally and the Hugging Face hub is not reachable; "
        f"use a local folder, a .gguf file, or an embedded model ({embedded})"
    )


def _load_error(
    spec: ModelSpec, resolved: ResolvedSource, exc: Exception, local_only: bool
) -> ModelLoadError:
    if resolved.kind == "hub" and isinstance(exc, OSError):
        if local_only:
            return ModelLoadError(_not_found_message(spec.source))
        return ModelLoadError(
            f"could not load model '{spec.source}' from the Hugging Face hub: {exc}; check the id (org/name) "
            "and your token for gated models, or use a local folder or an embedded model"
        )
    hint = ""
    if isinstance(exc, ValueError) and "trust_remote_code" in str(exc):
        hint = "; set trust_remote_code: true if you trust this model's code"
    elif "out of memory" in str(exc).lower():
        hint = "; use a smaller model, dtype bfloat16, or another device"
    return ModelLoadError(f"could not load model '{spec.source}': {type(exc).__name__}: {exc}{hint}")


def _concrete_dtype(spec: ModelSpec, device: str) -> str:
    if spec.dtype != "auto":
        return spec.dtype
    chosen = auto_dtype(device)
    logger.info("dtype auto for %s on %s: %s (%s)", spec.source, device, chosen,
                "accelerator" if not device.startswith("cpu") else
                "CPU with native bf16" if chosen == "bfloat16" else "CPU without native bf16")
    return chosen


def auto_dtype(device: str) -> str:
    """The number format ``dtype: auto`` picks for ``device``.

    bfloat16 on GPUs, and on CPUs whose instruction set computes in bf16 natively (AVX512-BF16 or AMX);
    float32 on other CPUs, where bf16 is emulated and several times slower than float32 (AVX2-only EPYCs).
    """
    if not device.startswith("cpu"):
        return "bfloat16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_CPU_BF16: list[bool] = []  # read once per process


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively, from the flags in ``/proc/cpuinfo`` (False where it is absent)."""
    if not _CPU_BF16:
        flags: set[str] = set()
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("flags"):
                        flags.update(line.partition(":")[2].split())
                        break
        except OSError:
            pass
        _CPU_BF16.append(bool(flags & _NATIVE_BF16_FLAGS))
    return _CPU_BF16[0]


def _pick_device(torch: Any, spec: ModelSpec) -> str:
    if spec.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"model '{spec.source}' asks for device '{spec.device}' but torch sees no CUDA device; "
            "use device: cpu (or auto)"
        )
    return spec.device


def collect_eos_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Every id that ends a turn, in a stable order without duplicates.

    The tokenizer's EOS, the generation config's EOS (an int or a list), and any `END_OF_TURN_TOKENS`
    that the tokenizer holds as a special (added) token: chat models often end a turn with a token that is
    not their declared EOS (Qwen's ``<|im_end|>`` vs ``<|endoftext|>``).
    """
    ids: list[int] = []

    def add(value: Any) -> None:
        values = value if isinstance(value, list | tuple) else [value]
        ids.extend(int(v) for v in values if isinstance(v, int) and v >= 0 and int(v) not in ids)

    add(getattr(tokenizer, "eos_token_id", None))
    add(getattr(generation_config, "eos_token_id", None))
    special = _special_token_ids(tokenizer)
    for token in END_OF_TURN_TOKENS:
        if token in special:
            add(special[token])
    return ids


def end_of_turn_id(tokenizer: Any, eos_ids: Sequence[int]) -> int | None:
    """The end token a finished answer of this model carries: what its chat template closes an assistant turn
    with (Qwen's ``<|im_end|>``, not its declared ``<|endoftext|>``), else the tokenizer's EOS, else the first
    of ``eos_ids``; None when there is none.

    Scoring a finished answer with the wrong end token costs the answer many nats (a token the model never
    writes there), so scorers and token-level strategies ask for this one.
    """
    ends = [int(i) for i in eos_ids]
    if not ends:
        return None
    if getattr(tokenizer, "chat_template", None):
        marker = "Zq7"  # rare enough not to merge with what follows it
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
            )
            tail = str(text).split(marker, 1)[1]
            for idx in tokenizer.encode(tail, add_special_tokens=False):
                if int(idx) in ends:
                    return int(idx)
        except Exception:  # a template that cannot render this turn: fall back below
            pass
    declared = getattr(tokenizer, "eos_token_id", None)
    return int(declared) if isinstance(declared, int) and declared in ends else ends[0]


def _special_token_ids(tokenizer: Any) -> dict[str, int]:
    # Only special tokens count: Gemma 3 has "</s>" as a non-special added token for HTML strikethrough,
    # which is text, not an end marker.
    found = {
        str(tok): int(idx)
        for idx, tok in getattr(tokenizer, "added_tokens_decoder", {}).items()
        if getattr(tok, "special", True)
    }
    for token in getattr(tokenizer, "all_special_tokens", []) or []:
        if token not in found:
            idx = tokenizer.convert_tokens_to_ids(token)
            if isinstance(idx, int):
                found[token] = idx
    return found


def context_length(config: Any) -> int:
    """The longest sequence the model's positions allow, from its (text) config; 2048 when unknown."""
    configs = [config]
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        configs.insert(0, get_text())
    for cfg in configs:
        for key in _CONTEXT_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
    return _DEFAULT_CONTEXT
