"""The embedded models load correctly after their one-time bf16 conversion (real weights; slow).

Each model is loaded once per module. The first run converts into the cache (about 3 minutes for all);
later runs load from it in seconds.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from ensemblehub_core.models import EMBEDDED_MODELS, LoadedModel, ModelSpec, cache_dir, load_model
from ensemblehub_core.models.convert import METADATA_FILE
from ensemblehub_core.models.loader import auto_dtype

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

PARAGRAPH = (
    "The history of the city goes back more than two thousand years. It began as a small fishing village "
    "on the banks of the river, and over the centuries it grew into an important centre of trade. Merchants "
    "came from far away to sell cloth, spices and wine, and the markets were busy every day of the week. "
    "Today the old town is a popular place for visitors, who walk through its narrow streets and enjoy the "
    "food in its many restaurants."
)
REAL_MODELS = ["smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"]


@pytest.fixture(scope="module")
def models() -> dict[str, LoadedModel]:
    """Loaded lazily, each at most once per module (several tests share one copy)."""
    return _LazyModels()


class _LazyModels(dict[str, LoadedModel]):
    def __missing__(self, name: str) -> LoadedModel:
        self[name] = load_model(ModelSpec(source=f"embedded:{name}"))
        return self[name]


def _perplexity(loaded: LoadedModel, text: str) -> float:
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        loss = loaded.model(input_ids=ids, labels=ids).loss
    return math.exp(loss.float().item())


@pytest.mark.parametrize("name", REAL_MODELS)
def test_perplexity_is_sane(models: dict[str, LoadedModel], name: str) -> None:
    # Gemma-3-270M's GGUF loaded wrongly under transformers 5.19 (perplexity ~1500); real models score ~8-13.
    ppl = _perplexity(models[name], PARAGRAPH)
    assert 1.5 < ppl < 100, f"{name}: perplexity {ppl:.1f}"


@pytest.mark.parametrize("name", [*REAL_MODELS, "tiny-random-llama"])
def test_loaded_model_is_ready_for_inference(models: dict[str, LoadedModel], name: str) -> None:
    loaded = models[name]
    assert loaded.model.training is False
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.model.dtype == getattr(torch, auto_dtype("cpu"))  # ModelSpec's default dtype is auto
    assert loaded.tokenizer.pad_token is not None
    assert Path(loaded.path).parent == cache_dir() / "models"
    assert loaded.has_chat_template == EMBEDDED_MODELS[name].has_chat_template
    assert loaded.context_length >= 2048


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
def test_chat_models_end_turns_with_im_end(models: dict[str, LoadedModel], name: str) -> None:
    loaded = models[name]
    tok = loaded.tokenizer
    assert tok.convert_tokens_to_ids("<|im_end|>") in loaded.eos_token_ids
    assert tok.convert_tokens_to_ids("<|endoftext|>") in loaded.eos_token_ids
    chat = [{"role": "user", "content": "Hi"}]
    prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_end|>" in prompt


def test_gemma_is_a_base_model_with_bos(models: dict[str, LoadedModel]) -> None:
    loaded = models["gemma3-270m"]
    tok = loaded.tokenizer
    assert not loaded.has_chat_template
    assert tok("Hello").input_ids[0] == tok.bos_token_id  # Gemma is far off without its <bos>
    ends = [tok.convert_ids_to_tokens(i) for i in loaded.eos_token_ids]
    assert ends == ["<eos>", "<end_of_turn>"]  # not "</s>": in Gemma 3 that is an HTML tag token


def test_tokenizers_round_trip_text(models: dict[str, LoadedModel]) -> None:
    text = "Hello  world!\n\nNew para: café, 日本語, x=3*4; def f():\n    return 1"
    for name in REAL_MODELS:
        tok = models[name].tokenizer
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text, name


def test_answer_text_decodes_as_the_whole_answer(models: dict[str, LoadedModel]) -> None:
    """The text a decode loop builds a few tokens at a time is, after every token, what decoding all of them gives:
    on text with spaces, punctuation, CJK and emoji split over byte tokens, and on random ids (special tokens and
    stray byte pieces included). On plain text, each decode call reads two tokens."""
    import random

    from ensemblehub_core.generators._hf_common import AnswerText

    text = "Hello  world , don't stop . 45 + 2 = 47\n\nCafé, 日本語 🙂🎉 x=3*4;\n    return 1 !"
    plain = "The answer is 47 , and it isn't 48 .\n\n    return x"
    rng = random.Random(0)
    for name in REAL_MODELS:
        tok = models[name].tokenizer

        def decode(ids: Any, tok: Any = tok) -> str:
            return str(tok.decode(list(ids), skip_special_tokens=False))

        widths: list[int] = []

        def counted(ids: Any, widths: list[int] = widths, decode: Any = decode) -> str:
            widths.append(len(ids))
            return decode(ids)

        for ids, reader in [(tok(text, add_special_tokens=False).input_ids, decode),
                            (tok(plain, add_special_tokens=False).input_ids, counted),
                            ([rng.randrange(len(tok)) for _ in range(300)], decode)]:
            answer = AnswerText(reader)
            for k, i in enumerate(ids, 1):
                assert answer.append(i) == decode(ids[:k]), (name, k)
        assert max(widths) == 2, (name, max(widths))


def test_smollm2_bf16_matches_its_gguf_fp32(models: dict[str, LoadedModel]) -> None:
    from transformers import AutoModelForCausalLM

    from ensemblehub_core.models.embedded import packaged_file

    loaded = models["smollm2-135m-instruct"]
    gguf = packaged_file(EMBEDDED_MODELS["smollm2-135m-instruct"])
    reference = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    ids = loaded.tokenizer(PARAGRAPH, return_tensors="pt").input_ids
    with torch.inference_mode():
        ref = reference(input_ids=ids).logits[0].float()
        got = loaded.model(input_ids=ids).logits[0].float()
    agreement = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
    assert agreement >= 0.9, f"argmax agrees on {agreement:.0%} of positions"
    # bf16 rounding moves log-probabilities a little, never by much.
    drift = (ref.log_softmax(-1) - got.log_softmax(-1)).abs().max(-1).values.median().item()
    assert drift < 1.0, f"median max log-prob drift {drift:.2f}"


def test_second_load_comes_from_the_cache(models: dict[str, LoadedModel]) -> None:
    first = models["smollm2-135m-instruct"]
    folder = Path(first.path)
    stamps = _stamps(folder)
    assert (folder / METADATA_FILE).is_file() and (folder / "model.safetensors").is_file()
    started = time.perf_counter()
    again = load_model(first.spec)
    elapsed = time.perf_counter() - started
    assert again.path == first.path and _stamps(folder) == stamps  # nothing was converted again
    assert again.model is not first.model
    assert elapsed < 20, f"cached load took {elapsed:.1f} s"


def _stamps(folder: Path) -> dict[str, Any]:
    return {p.name: p.stat().st_mtime_ns for p in [folder, *folder.iterdir()]}


def test_other_dtypes_and_heads_load_from_the_same_folder(models: dict[str, LoadedModel]) -> None:
    tiny = models["tiny-random-llama"]
    fp32 = load_model(ModelSpec(source="embedded:tiny-random-llama", dtype="float32"))
    assert fp32.model.dtype == torch.float32 and fp32.path == tiny.path
    assert tiny.eos_token_ids == [tiny.tokenizer.eos_token_id] and tiny.context_length == 2048
