"""`AnswerText` (the text of an answer being decoded, a few tokens at a time) against decoding it whole, on a
SentencePiece-style tokenizer built here: its decoder drops the leading space of the first token it sees and
joins byte pieces into characters, the two ways a window's text can differ from its place in the whole."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from ensemblehub_core.generators._hf_common import AnswerText

tokenizers = pytest.importorskip("tokenizers")

# "日" is the bytes E6 97 A5; "▁" marks a space, as in Llama's and Gemma's vocabularies.
VOCAB = {"▁Hello": 0, "▁world": 1, "!": 2, "<0xE6>": 3, "<0x97>": 4, "<0xA5>": 5, "▁": 6, "s": 7}


@pytest.fixture(scope="module")
def decode() -> object:
    from tokenizers import Tokenizer, decoders, models

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="!"))
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])

    def run(ids: Sequence[int]) -> str:
        return str(tok.decode(list(ids), skip_special_tokens=False))

    assert run([1]) == "world" and run([0, 1]) == "Hello world"  # the decoder this test is about
    return run


def test_every_prefix_reads_as_the_whole_decode(decode: object) -> None:
    run = decode
    assert callable(run)
    for ids in [[0, 1, 2, 1, 7], [0, 3, 4, 5, 1], [3, 4, 5, 3, 4, 5, 2], [6, 1, 6, 6, 2], [3, 1, 5, 4, 0]]:
        answer = AnswerText(run)
        for k, i in enumerate(ids, 1):
            assert answer.append(i) == run(ids[:k]), (ids, k)
    for ids in itertools.product(range(len(VOCAB)), repeat=4):  # every sequence of four tokens
        answer = AnswerText(run)
        texts = [answer.append(i) for i in ids]
        assert texts == [run(ids[:k]) for k in range(1, 5)], ids


def test_decodes_a_short_window_per_token(decode: object) -> None:
    run = decode
    assert callable(run)
    widths: list[int] = []

    def counted(ids: Sequence[int]) -> str:
        widths.append(len(ids))
        return str(run(ids))

    answer = AnswerText(counted)
    ids = [0, 1, 2, 6] * 100
    for i in ids:
        answer.append(i)
    assert answer.text == run(ids)
    assert max(widths) == 2  # the last settled token and the new one
