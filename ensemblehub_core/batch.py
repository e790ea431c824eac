"""Run an ensemble over a dataset (JSON or JSONL) and write one JSONL line per example as soon as it is done.

Each input example needs a ``question``, ``prompt`` or ``messages`` field; ``id`` is optional (the line number
is used otherwise). Every other field is carried to the output under ``example`` (e.g. a reference answer).
An example that fails is written with its error and the run goes on.

The output survives the process being killed at any moment: each line goes to the file in one write, and
``resume`` first rewrites the file (atomically: a temporary file renamed over it) keeping one successful line
per id and dropping failed lines and a half-written last line, then runs every example not in it. Ids are
unique within a run: a row without an id, or a line that cannot be read, gets an id no other row has.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensemblehub_core._text import find_surrogate
from ensemblehub_core.engine import Ensemble, to_messages
from ensemblehub_core.exceptions import EnsembleHubError, InputError
from ensemblehub_core.types import Message

__all__ = ["BatchSummary", "Example", "check_paths", "finished_ids", "read_examples", "run_batch"]

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


def _example(ex_id: str, where: str, row: dict[str, Any]) -> Example:
    fields = {k: v for k, v in row.items() if k not in _PROMPT_FIELDS and k != "id"}
    for key in _PROMPT_FIELDS:
        if key in row:
            value = row[key]
            bad = find_surrogate(value, key)
            if bad is not None:
                return Example(id=ex_id, messages=None, fields=fields,
                               error=f"{where}: field '{bad}' holds a lone UTF-16 surrogate (an escape such as "
                               "\\ud800 without its pair), which is not text; fix the input")
            try:
                msgs = to_messages(value if key == "messages" else str(value))
            except EnsembleHubError as exc:
                return Example(id=ex_id, messages=None, fields=fields, error=f"field '{key}': {exc}")
            return Example(id=ex_id, messages=msgs, fields=fields)
    return Example(id=ex_id, messages=None, fields=fields,
                   error=f"no prompt: the example needs one of the fields {', '.join(_PROMPT_FIELDS)}")


def _rows(p: Path) -> Iterator[tuple[str, Any, str | None]]:
    """``(where, row, error)`` for each example of a file: ``where`` names its line (or list item)."""
    text = p.read_text(encoding="utf-8", errors="surrogateescape")
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
            yield f"item {i}", row, None
        return
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"line {line_no}", None, f"line {line_no}: invalid JSON ({exc.msg})"
        else:
            yield f"line {line_no}", row, None


def read_examples(path: str | Path) -> Iterator[Example]:
    """Yield examples from a JSONL file (one object per line) or a JSON file (a list, or {"data": [...]}).

    An example without an ``id`` gets its index; a line that is not a JSON object gets ``line-N``; either is
    changed (``~2``, ...) where another row already has that id. A second row with an explicit id already
    seen is not run: it gets a fresh id and an error naming the duplicate.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input file {p} does not exist")
    rows = list(_rows(p))
    explicit = [str(row["id"]) for _, row, _ in rows if isinstance(row, dict) and "id" in row]
    taken: set[str] = set()
    reserved = set(explicit)

    def fresh(base: str) -> str:
        cand, k = base, 2
        while cand in taken or cand in reserved:
            cand, k = f"{base}~{k}", k + 1
        taken.add(cand)
        return cand

    for index, (where, row, error) in enumerate(rows):
        if error is not None or not isinstance(row, dict):
            yield Example(id=fresh(f"line-{where.split()[-1]}" if where.startswith("line") else str(index)),
                          messages=None, fields={}, error=error or f"{where}: expected a JSON object")
        elif "id" in row:
            ex_id = str(row["id"])
            if ex_id in taken:
                fields = {k: v for k, v in row.items() if k != "id"}
                yield Example(id=fresh(f"{ex_id}~dup"), messages=None, fields=fields,
                              error=f"{where}: id '{ex_id}' is used by an earlier example; give each example "
                              "its own id")
            else:
                taken.add(ex_id)
                yield _example(ex_id, where, row)
        else:
            yield _example(fresh(str(index)), where, row)


def check_paths(input_path: str | Path, output_path: str | Path, *, resume: bool = False,
                overwrite: bool = False) -> None:
    """Refuse a run that would lose data or could not write its output, before any model is loaded.

    Raises:
        InputError: the input is missing; the output is the input; the output already holds results and
            neither ``resume`` nor ``overwrite`` is set; the output cannot be written.
    """
    inp, out = Path(input_path), Path(output_path)
    if not inp.exists():
        raise InputError(f"input file {inp} does not exist")
    if out.exists() and (out.resolve() == inp.resolve() or os.path.samefile(inp, out)):
        raise InputError(f"the output {out} is the input file; write the results to another file")
    if out.is_dir():
        raise InputError(f"the output {out} is a directory; name a file")
    if out.exists() and out.stat().st_size and not (resume or overwrite):
        raise InputError(f"the output {out} already holds results; pass --resume to continue that run or "
                         "--overwrite to replace them")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".probe"):
            pass  # the directory takes new files (resume renames one over the output)
        if out.exists():
            with out.open("ab"):
                pass
    except OSError as exc:
        raise InputError(f"the output {out} cannot be written ({exc.strerror or exc}); choose another path or "
                         "fix its permissions") from None


def finished_ids(path: str | Path) -> set[str]:
    """Ids with a successful line in an output file (failed lines and a truncated last line are ignored)."""
    return set(_finished_lines(Path(path)))


def _finished_lines(p: Path) -> dict[str, bytes]:
    """The first successful line of each id, in file order."""
    if not p.exists():
        return {}
    kept: dict[str, bytes] = {}
    for line in p.read_bytes().split(b"\n"):
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # blank, or half written by a crash
        if isinstance(row, dict) and "id" in row and not row.get("error"):
            kept.setdefault(str(row["id"]), line)
    return kept


def _rewrite(p: Path, lines: list[bytes]) -> None:
    """Replace ``p`` by ``lines`` atomically: a kill leaves either the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"".join(line + b"\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself on disk (not possible on every system)
        dir_fd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _dump(row: dict[str, Any]) -> bytes:
    """One output line; text that cannot be UTF-8 (a lone surrogate in a carried field) is escaped instead."""
    try:
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(row) + "\n").encode("ascii")


def run_batch(
    ensemble: Ensemble,
    input_path: str | Path,
    output_path: str | Path,
    *,
    max_examples: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    params: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    full_trace: bool = False,
) -> BatchSummary:
    """Run ``ensemble`` over a dataset, appending results to ``output_path`` one line at a time.

    Args:
        resume: Keep the successful lines already in the output (one per id) and run the other examples;
            failed lines are dropped and their examples run again.
        overwrite: Replace an output that already holds results (without ``resume`` or ``overwrite``, such an
            output is refused so that no results are lost by mistake).
        params: Generation overrides for every example.
        progress: Called as ``progress(done_so_far, total)``.

    Raises:
        InputError: see `check_paths`; also an input that cannot be read.
    """
    check_paths(input_path, output_path, resume=resume, overwrite=overwrite)
    examples = list(read_examples(input_path))
    if max_examples is not None:
        examples = examples[:max_examples]
    out = Path(output_path)
    if resume:
        kept = _finished_lines(out)
        _rewrite(out, list(kept.values()))
        skip = set(kept)
    else:
        _rewrite(out, [])
        skip = set()
    summary = BatchSummary()
    started = time.perf_counter()
    # Unbuffered: each line reaches the file in one write, so a kill leaves at most the last line cut short.
    with out.open("ab", buffering=0) as fh:
        for n, ex in enumerate(examples, 1):
            if ex.id in skip:
                summary.skipped += 1
            else:
                row = _run_one(ensemble, ex, params or {}, full_trace)
                summary.failed += bool(row.get("error"))
                summary.done += not row.get("error")
                data = memoryview(_dump(row))
                while data:
                    data = data[fh.write(data) or 0:]
            if progress:
                progress(n, len(examples))
    summary.elapsed_s = time.perf_counter() - started
    return summary


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
