"""Run an ensemble over a dataset (JSON or JSONL) and write one JSONL line per example as soon as it is done.

Each input example needs a ``question``, ``prompt`` or ``messages`` field; ``id`` is optional (the line number
is used otherwise). Every other field is carried to the output under ``example`` (e.g. a reference answer).
``resume`` skips ids already in the output file, so an interrupted run picks up where it stopped; an example
that fails is written with its error and the run goes on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensemblehub_core.engine import Ensemble, to_messages
from ensemblehub_core.exceptions import EnsembleHubError, InputError
from ensemblehub_core.types import Message

__all__ = ["BatchSummary", "Example", "finished_ids", "read_examples", "run_batch"]

_PROMPT_FIELDS = ("messages", "question", "prompt")


@dataclass(kw_only=True)
class Example:
    """One dataset row: its id, the conversation, the other fields; or the reason it is unusable."""

    id: str
    messages: list[Message] | None
    fields: dict[str, Any]
    error: str | None = None


@dataclass(kw_only=True)
class BatchSummary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0


def _example(index: int, row: Any) -> Example:
    if not isinstance(row, dict):
        return Example(id=str(index), messages=None, fields={}, error=f"line {index + 1}: expected a JSON object")
    ex_id = str(row.get("id", index))
    fields = {k: v for k, v in row.items() if k not in _PROMPT_FIELDS and k != "id"}
    for key in _PROMPT_FIELDS:
        if key in row:
            try:
                value = row[key]
                msgs = to_messages(value if key == "messages" else str(value))
            except EnsembleHubError as exc:
                return Example(id=ex_id, messages=None, fields=fields, error=f"field '{key}': {exc}")
            return Example(id=ex_id, messages=msgs, fields=fields)
    return Example(id=ex_id, messages=None, fields=fields,
                   error=f"no prompt: the example needs one of the fields {', '.join(_PROMPT_FIELDS)}")


def read_examples(path: str | Path) -> Iterator[Example]:
    """Yield examples from a JSONL file (one object per line) or a JSON file (a list, or {"data": [...]})."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if p.suffix == ".json" or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p} is not valid JSON ({exc}); use a JSON list or one object per line (JSONL)") from None
        rows = data.get("data") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise InputError(f"{p}: expected a JSON list of examples (or an object with a 'data' list)")
        for i, row in enumerate(rows):
            yield _example(i, row)
        return
    index = 0
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Example(id=str(index), messages=None, fields={}, error=f"line {line_no}: invalid JSON ({exc.msg})")
        else:
            yield _example(index, row)
        index += 1


def finished_ids(path: str | Path) -> set[str]:
    """Ids already written to an output file (a truncated last line from a crash is ignored)."""
    p = Path(path)
    if not p.exists():
        return set()
    ids = set()
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "id" in row and not row.get("error"):
            ids.add(str(row["id"]))
    return ids


def run_batch(
    ensemble: Ensemble,
    input_path: str | Path,
    output_path: str | Path,
    *,
    max_examples: int | None = None,
    resume: bool = False,
    params: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    full_trace: bool = False,
) -> BatchSummary:
    """Run ``ensemble`` over a dataset, appending results to ``output_path`` one line at a time.

    Args:
        resume: Skip examples whose id already has a successful line in the output (failed ones are retried).
        params: Generation overrides for every example.
        progress: Called as ``progress(done_so_far, total)``.
    """
    examples = list(read_examples(input_path))
    if max_examples is not None:
        examples = examples[:max_examples]
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if resume:
        _drop_partial_line(out)
    elif out.exists():
        out.unlink()  # a fresh run replaces old results; --resume keeps them
    skip = finished_ids(out) if resume else set()
    summary = BatchSummary()
    started = time.perf_counter()
    with out.open("a", encoding="utf-8") as fh:
        for n, ex in enumerate(examples, 1):
            if ex.id in skip:
                summary.skipped += 1
            else:
                row = _run_one(ensemble, ex, params or {}, full_trace)
                summary.failed += bool(row.get("error"))
                summary.done += not row.get("error")
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()  # each line is on disk before the next example starts
            if progress:
                progress(n, len(examples))
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _drop_partial_line(path: Path) -> None:
    """Cut a last line left half-written by a crash, so appended lines stay one JSON object each."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def _run_one(ensemble: Ensemble, ex: Example, params: dict[str, Any], full_trace: bool) -> dict[str, Any]:
    base: dict[str, Any] = {"id": ex.id, "example": ex.fields}
    if ex.messages is None:
        return {**base, "error": ex.error}
    try:
        result = ensemble.generate(ex.messages, **params)
    except EnsembleHubError as exc:
        return {**base, "error": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # one bad example must not end the run; the error is kept in its line
        return {**base, "error": f"unexpected {type(exc).__name__}: {exc}"}
    return {**base, **result.to_dict(full_trace=full_trace)}
