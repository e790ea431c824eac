"""The quality benchmark's per-item store: made in chunks, appended at once, resumed after a stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.datasets import Item
from benchmarks.quality import fingerprint, kept_per_item


def _items(n: int) -> list[Item]:
    return [Item(kind="number", prompt=f"What is {i} + 1?", answer=str(i + 1), id=f"i{i}") for i in range(n)]


def test_chunks_are_kept_as_made_and_a_stopped_run_resumes(tmp_path: Path) -> None:
    store = tmp_path / "records.jsonl"
    made: list[list[str]] = []

    def make(part: list[Item]) -> list[dict[str, str]]:
        made.append([it.id for it in part])
        if len(made) == 2:
            raise KeyboardInterrupt  # stopped while the second chunk is being made
        return [{"text": it.answer} for it in part]

    def keep(items: list[Item]) -> list[dict[str, str]]:
        return kept_per_item(store, "s", "test", items, make, lambda r: r, lambda row: {"text": row["text"]},
                             chunk=3)

    with pytest.raises(KeyboardInterrupt):
        keep(_items(7))
    assert len(store.read_text().splitlines()) == 3  # the first chunk, nothing of the second
    with store.open("a") as f:
        f.write('{"set": "s", "split": "test", "id": "i3", "te')  # a line the stop left half written
    out = keep(_items(7))
    assert made[2:] == [["i3", "i4", "i5"], ["i6"]]  # only what was missing, the half line included
    assert [r["text"] for r in out] == [str(i + 1) for i in range(7)]
    assert keep(_items(7)) == out and len(made) == 4  # all kept: nothing made again


def test_a_changed_config_gets_another_fingerprint() -> None:
    base = {"strategy": {"name": "segment", "segment_tokens": 24}}
    assert fingerprint(base) == fingerprint({"strategy": {"segment_tokens": 24, "name": "segment"}})
    assert fingerprint(base) != fingerprint({"strategy": {"name": "segment", "segment_tokens": 16}})
    assert fingerprint(base, "float32") != fingerprint(base, "bfloat16")
