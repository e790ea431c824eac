"""Token strings as bytes, the union vocabulary, and tail re-tokenization across real tokenizers.

The normalisation tests run on strings alone; the ones marked slow load the embedded members' tokenizers
(SmolLM2 49k BPE, Qwen2.5 152k BPE, Gemma-3 262k SentencePiece, Llama-2 32k SentencePiece).
"""

from __future__ import annotations

import random

import pytest

from ensemblehub_core.generators.hf import HFGenerator
from ensemblehub_core.generators.hf_tokens import TailEncoder, split_utf8, vocab_of
from ensemblehub_core.generators.vocab import MemberVocab, byte_level_bytes, sentencepiece_bytes
from ensemblehub_core.strategies.vocab import EOS_UNION_ID, clear_caches, union_vocab

TEXTS = [
    "The capital of France is Paris. It has 2,148,271 inhabitants (2020)!\n\nNext: naïve café 😀 — ok?",
    "def f(x):\n    return x ** 2  # square\n\n\nprint(f(12))",
    "  multiple   spaces\tand\ttabs\n\n- item 1\n- item 2",
    "日本語のテキストと English mixed 123.45 % \\boxed{\\frac{1}{2}}",
]


def test_byte_level_and_sentencepiece_spellings_mean_the_same_bytes():
    assert byte_level_bytes("Ġthe") == sentencepiece_bytes("▁the") == b" the"
    assert byte_level_bytes("Ċ") == sentencepiece_bytes("<0x0A>") == b"\n"
    assert byte_level_bytes("ĠðŁĺĢ") == " 😀".encode()
    assert byte_level_bytes("Ã©") == "é".encode()
    assert sentencepiece_bytes("<0xF0>") == b"\xf0"


def test_split_utf8_keeps_an_unfinished_character_apart():
    data = "a😀".encode()
    assert split_utf8(data[:-2]) == ("a", data[1:-2])
    assert split_utf8(data) == ("a😀", b"")


def _vocab(key: str, pieces: list[bytes | None], eos: set[int]) -> MemberVocab:
    return MemberVocab(
        key=key,
        scheme="plain",
        pieces=pieces,
        eos_ids=frozenset(eos),
        index={p: i for i, p in enumerate(pieces) if p is not None},
    )


def test_union_maps_shared_bytes_once_eos_together_and_control_tokens_to_the_sink():
    import torch

    a = _vocab("a", [b"x", b" y", None, b"<eos-a>"], {3})
    b = _vocab("b", [b" y", b"z", b"</s>", b"x"], {2})
    union, cached = union_vocab([a, b])
    assert not cached and union_vocab([a, b]) == (union, True)
    assert union.pieces[EOS_UNION_ID] is None and union.size == 4  # EOS, x, " y", z
    assert union.maps[0].tolist() == [1, 2, union.sink, EOS_UNION_ID]
    assert union.maps[1].tolist() == [2, 3, EOS_UNION_ID, 1]
    total = union.combine([torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.5, 0.2, 0.2, 0.1])], [0.5, 0.5])
    assert torch.allclose(total, torch.tensor([0.3, 0.1, 0.35, 0.1, 0.0]))  # the sink's 0.3 is dropped
    assert union.member_mass(1, torch.tensor([0.5, 0.2, 0.2, 0.1]), 1) == pytest.approx(0.1)


# -- real tokenizers ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def members(smol: HFGenerator, qwen: HFGenerator, gemma: HFGenerator, llama: HFGenerator) -> list[HFGenerator]:
    return [smol, qwen, gemma, llama]


@pytest.mark.slow
def test_schemes_are_detected(members):
    vocabs = {g.name: vocab_of(g) for g in members}
    assert {n: v.scheme for n, v in vocabs.items()} == {
        "smol": "byte_level",
        "qwen": "byte_level",
        "gemma": "sentencepiece",
        "llama": "sentencepiece",
    }
    assert [v.dummy_prefix for v in vocabs.values()] == [False, False, False, True]
    assert vocabs["qwen"].piece(vocabs["qwen"].index[b" Paris"]) == b" Paris"
    assert vocabs["gemma"].index[b" Paris"] == members[2].tokenizer.convert_tokens_to_ids("▁Paris")
    for g in members:  # control tokens are never text; EOS is known
        v = vocabs[g.name]
        assert v.eos_ids and all(v.piece(i) is None for i in v.eos_ids)


@pytest.mark.slow
def test_a_token_of_one_member_reencodes_into_the_others_and_decodes_to_the_same_text(members):
    rng = random.Random(0)
    vocabs = {g.name: vocab_of(g) for g in members}
    for src in members:
        pieces = [p for p in vocabs[src.name].pieces if p and _is_text(p)]
        for piece in rng.sample(pieces, 150):
            text = piece.decode()
            for dst in members:
                if dst is src:
                    continue
                enc = TailEncoder(dst.tokenizer, vocabs[dst.name])
                context = b"Answer: x"  # in the middle of an answer, as the strategies feed text
                keep, new, _ = enc.resync(*enc.encode(context), context + piece)
                ids = enc.encode(context)[0][:keep] + new
                assert vocabs[dst.name].text_of(ids).endswith(context + piece), (src.name, dst.name, piece)
                if not vocabs[dst.name].dummy_prefix:  # Llama-2's decoder drops a leading space
                    alone, _ = enc.encode(piece)
                    assert dst.tokenizer.decode(alone) == text, (src.name, dst.name, piece)


def _is_text(piece: bytes) -> bool:
    try:
        text = piece.decode()
    except UnicodeDecodeError:
        return False
    return text.isprintable() or text.strip(" \n\t") == ""


@pytest.mark.slow
def test_tail_reencoding_matches_encoding_the_whole_text(members):
    vocabs = {g.name: vocab_of(g) for g in members}
    for src in members:
        for dst in members:
            enc = TailEncoder(dst.tokenizer, vocabs[dst.name])
            for text in TEXTS:
                data, ids, ends = b"", [], []
                for tid in src.tokenizer.encode(text, add_special_tokens=False):
                    data += vocabs[src.name].piece(tid) or b""
                    keep, new, new_ends = enc.resync(ids, ends, data)
                    ids, ends = ids[:keep] + new, ends[:keep] + new_ends
                    assert ids == enc.encode(data)[0], (src.name, dst.name, data)


@pytest.mark.slow
def test_union_of_three_tokenizers_is_built_once_and_cached(smol, qwen, gemma):
    clear_caches()
    vocabs = [vocab_of(g) for g in (smol, qwen, gemma)]
    union, cached = union_vocab(vocabs)
    assert not cached and union_vocab(vocabs)[1]
    assert 262_144 < union.size < 49_152 + 151_936 + 262_144
    assert union.nbytes > 0 and union.build_s > 0
    # the same text is one union token whoever spells it
    for piece in (b" Paris", b"\n", b" the"):
        uid = union.index[piece]
        for m, v in enumerate(vocabs):
            assert int(union.maps[m][v.index[piece]]) == uid
    for m, v in enumerate(vocabs):
        assert all(int(union.maps[m][i]) == EOS_UNION_ID for i in v.eos_ids)
