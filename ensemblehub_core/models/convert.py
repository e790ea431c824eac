"""GGUF → plain bf16 transformers folder, converted once and cached.

Loading a GGUF through transformers de-quantizes every tensor to fp32 on each load (10-80 s here); the
converted safetensors folder loads in a few seconds. Folders live under ``cache_dir()/models`` and are
named ``<name>-<key>``: the key is the package pin for embedded models, and the file's path, size and mtime
for a GGUF file, so an edited file converts again.

Safe against concurrent processes: the conversion runs under an exclusive ``flock`` on ``<folder>.lock``,
writes into a temporary folder beside the target, and ``os.replace``-s it into place at the end, so a folder
that exists is always complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ensemblehub_core.exceptions import ModelLoadError
from ensemblehub_core.models.embedded import discard_gguf, materialise_gguf
from ensemblehub_core.models.sources import ResolvedSource

if sys.platform != "win32":
    import fcntl

__all__ = ["cache_dir", "convert_gguf", "converted_folder", "ensure_converted", "file_lock", "require_hf"]

logger = logging.getLogger(__name__)

CACHE_ENV = "ENSEMBLEHUB_CACHE"
METADATA_FILE = "ensemblehub_conversion.json"

#: Returns the GGUF to convert and whether it is a disposable copy (deleted once converted).
GgufProvider = Callable[[], tuple[Path, bool]]
#: Converts the GGUF (first argument) into a transformers folder (second argument, already created).
Converter = Callable[[Path, Path], None]


def cache_dir() -> Path:
    """Where Ensemble-Hub keeps converted models: ``$ENSEMBLEHUB_CACHE``, else the user cache folder."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("ensemblehub"))


def require_hf(*, gguf: bool = False) -> tuple[Any, Any]:
    """Import torch and transformers (and check for gguf), or say which extra to install.

    Returns:
        The ``torch`` and ``transformers`` modules.

    Raises:
        ModelLoadError: a library of the ``hf`` extra is missing.
    """
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ModelLoadError(
            f"local models need torch and transformers ({exc}); "
            "install them with: pip install 'ensemblehub[hf]'"
        ) from exc
    if gguf:
        import importlib.util

        missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
        if missing:
            raise ModelLoadError(
                f"reading GGUF files needs {' and '.join(missing)}; "
                "install with: pip install 'ensemblehub[hf]'"
            )
    return torch, transformers


def converted_folder(resolved: ResolvedSource) -> Path:
    """The cache folder that holds (or will hold) the bf16 conversion of a GGUF source."""
    return cache_dir() / "models" / f"{resolved.name}-{resolved.cache_key()}"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed); blocks until it is free.

    flock locks belong to an open file description, so this excludes threads of one process as well as
    other processes. On Windows (no flock) it only creates the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if sys.platform == "win32":
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_converted(resolved: ResolvedSource, *, converter: Converter | None = None) -> Path:
    """Return the converted folder of a GGUF ``resolved`` source, converting it first if needed.

    Args:
        resolved: An ``embedded`` or ``gguf`` source.
        converter: Replaces `convert_gguf` (tests inject a fast fake).

    Raises:
        ModelLoadError: the GGUF could not be obtained or converted.
    """
    target = converted_folder(resolved)

    def provide() -> tuple[Path, bool]:
        if resolved.embedded is not None:
            return materialise_gguf(resolved.embedded, cache_dir() / "gguf")
        if resolved.path is None:
            raise ModelLoadError(f"model '{resolved.source}' has no local GGUF file to convert")
        return resolved.path, False

    return convert_once(target, provide, converter=converter or convert_gguf, label=resolved.source)


def convert_once(target: Path, provide: GgufProvider, *, converter: Converter, label: str) -> Path:
    """Run ``converter`` into ``target`` unless it already exists; atomic and process-safe."""
    if target.is_dir():
        return target
    with file_lock(target.with_name(target.name + ".lock")):
        if target.is_dir():  # another process converted it while we waited for the lock
            return target
        _remove_stale_temps(target)
        gguf, disposable = provide()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        started = time.perf_counter()
        logger.info("converting %s to a bf16 folder (once; about a minute)", label)
        try:
            converter(gguf, tmp)
            _share(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("converted %s in %.1f s into %s", label, time.perf_counter() - started, target)
        if disposable:
            discard_gguf(gguf)
    return target


def _share(folder: Path) -> None:
    # mkdtemp makes the folder 0700 and safetensors writes 0600 files; the cache is meant to be shared by
    # every process of the user (and by other users where the umask allows), so use ordinary modes.
    umask = _current_umask()
    folder.chmod(0o777 & ~umask)
    for item in folder.iterdir():
        if item.is_file():
            item.chmod(0o666 & ~umask)


def _current_umask() -> int:
    # os.umask() can only be read by setting it, which races with other threads; Linux shows it in /proc.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _remove_stale_temps(target: Path) -> None:
    # We hold the lock, so any temporary folder left beside the target is from a killed conversion.
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantize ``gguf`` through transformers and save it as a bf16 safetensors folder into ``out``.

    Raises:
        ModelLoadError: transformers could not read or save the model.
    """
    torch, transformers = require_hf(gguf=True)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # The GGUF quantizer marks the model as quantized and non-serializable; once de-quantized the
        # weights are plain tensors, so drop it (and the config entry, or reloading would look for GGUF).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.to(torch.bfloat16)
        model.config.dtype = torch.bfloat16
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    except Exception as exc:  # transformers/gguf raise anything from KeyError to NotImplementedError
        raise ModelLoadError(f"converting GGUF '{gguf}' failed: {type(exc).__name__}: {exc}") from exc
    _write_metadata(out, gguf, torch.__version__, transformers.__version__)


def _write_metadata(out: Path, gguf: Path, torch_version: str, transformers_version: str) -> None:
    info = {
        "gguf": str(gguf),
        "gguf_size": gguf.stat().st_size,
        "dtype": "bfloat16",
        "torch": torch_version,
        "transformers": transformers_version,
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / METADATA_FILE).write_text(json.dumps(info, indent=2) + "\n")
