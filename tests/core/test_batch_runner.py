"""The batch runner and ``ensemblehub run`` under clumsy and hostile use: paths, ids, encodings, kills.

The CLI runs in a subprocess (the real command, this checkout's code) where the exit code or a kill matters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ensemblehub_core.batch import check_paths, read_examples, run_batch
from ensemblehub_core.exceptions import InputError
from ensemblehub_core.hub import Hub

ROOT = Path(__file__).resolve().parents[2]

CONFIG = {
    "ensembles": {
        "echo": {
            "members": [{"name": "e", "backend": "function", "options": {"fn": "tests.fakes:echo"}}],
            "strategy": "single",
        },
        "slow": {
            "members": [{"name": "s", "backend": "function", "options": {"fn": "tests.fakes:slow_echo"}}],
            "strategy": "single",
        },
        "broken": {
            "members": [{"name": "b", "backend": "function", "options": {"fn": "tests.fakes:broken"}}],
            "strategy": "single",
        },
    },
}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    p = tmp_path / "hub.yaml"
    p.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    return p


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ensemblehub_core.cli", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


# -- paths -------------------------------------------------------------------------------------------------
def test_output_equal_to_input_is_refused_and_the_input_kept(tmp_path: Path, config_file: Path) -> None:
    data = write_jsonl(tmp_path / "a.jsonl", [{"question": "q"}])
    before = data.read_text()
    r = cli("run", "--config", str(config_file), "--ensemble", "echo", "--input", str(data), "--output", str(data))
    assert r.returncode == 2 and "is the input file" in r.stderr, r.stderr
    assert data.read_text() == before
    (tmp_path / "link.jsonl").symlink_to(data)
    with pytest.raises(InputError, match="is the input file"):
        check_paths(data, tmp_path / "link.jsonl", overwrite=True)


def test_existing_output_needs_resume_or_overwrite(tmp_path: Path, config_file: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": "x", "question": "q"}])
    out = write_jsonl(tmp_path / "o.jsonl", [{"id": "old", "text": "precious"}])
    r = cli("run", "--config", str(config_file), "--ensemble", "echo", "--input", str(data), "--output", str(out))
    assert r.returncode == 2 and "--resume" in r.stderr and "--overwrite" in r.stderr
    assert "precious" in out.read_text()
    r = cli("run", "--config", str(config_file), "--ensemble", "echo", "--input", str(data), "--output", str(out),
            "--overwrite")
    assert r.returncode == 0, r.stderr
    assert [row["id"] for row in lines(out)] == ["x"]


def test_unwritable_output_is_refused_before_the_models_load(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "q"}])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # A config whose model does not exist: had the run loaded it, the error would be about the model.
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"ensembles": {"m": {"members": [{"name": "x", "model": str(tmp_path / "none")}]}}}))
    started = time.monotonic()
    r = cli("run", "--config", str(bad), "--input", str(data), "--output", str(blocker / "out.jsonl"))
    assert r.returncode == 2 and "cannot be written" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and time.monotonic() - started < 30


# -- ids, encodings, exit code -------------------------------------------------------------------------------
def test_generated_ids_never_clash_with_real_ones(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "line-2", "question": "real"},   # the id a bad line 2 would get
        "{oops",
        {"question": "no id"},                  # index 2
        {"id": "2", "question": "real two"},
        {"id": "2", "question": "again"},
    ])
    ids = [ex.id for ex in read_examples(data)]
    assert len(ids) == len(set(ids)) == 5
    assert ids[0] == "line-2" and ids[3] == "2"
    examples = list(read_examples(data))
    assert "invalid JSON" in (examples[1].error or "") and examples[2].error is None
    assert "used by an earlier example" in (examples[4].error or "")


def test_lone_surrogate_gets_an_error_row_and_the_run_goes_on(tmp_path: Path, config_file: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "bad", "question": "\\ud800 hi", "note": "\\udc00"}\n{"id": "ok", "question": "fine"}\n')
    out = tmp_path / "o.jsonl"
    summary = run_batch(Hub(config_file).ensemble("echo"), data, out)
    assert (summary.done, summary.failed) == (1, 1)
    rows = {r["id"]: r for r in lines(out)}
    assert "surrogate" in str(rows["bad"]["error"]) and "question" in str(rows["bad"]["error"])
    assert rows["ok"]["text"] == "You said: fine"


def test_exit_code_is_nonzero_when_an_example_failed(tmp_path: Path, config_file: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "q"}, {"nothing": 1}])
    r = cli("run", "--config", str(config_file), "--ensemble", "echo", "--input", str(data),
            "--output", str(tmp_path / "o.jsonl"))
    assert r.returncode == 1 and "1 examples failed" in r.stderr and "--resume" in r.stderr


def test_resume_reruns_failed_rows_without_duplicating_ids(tmp_path: Path, config_file: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": str(i), "question": f"q{i}"} for i in range(20)])
    out = tmp_path / "o.jsonl"
    hub = Hub(config_file)
    assert run_batch(hub.ensemble("broken"), data, out, max_examples=2).failed == 2
    summary = run_batch(hub.ensemble("echo"), data, out, resume=True)
    assert (summary.done, summary.skipped, summary.failed) == (20, 0, 0)
    rows = lines(out)
    assert sorted(int(str(r["id"])) for r in rows) == list(range(20)) and not any(r.get("error") for r in rows)


# -- kill -9 at any moment -----------------------------------------------------------------------------------
def test_kill_9_at_several_points_then_resume_keeps_every_id_once(tmp_path: Path, config_file: Path) -> None:
    n = 40
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": f"ex{i}", "question": f"q{i}", "pad": "x" * 20_000}
                                              for i in range(n)])
    out = tmp_path / "o.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "ensemblehub_core.cli", "run", "--config", str(config_file), "--ensemble", "slow",
            "--input", str(data), "--output", str(out)]
    kills = 0
    # Kill when the output holds about this many lines (0: during start-up or the resume's rewrite).
    for i, at_lines in enumerate([0, 3, 9, 17, 26]):
        proc = subprocess.Popen([*base, *(["--resume"] if i else [])], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            have = out.read_bytes().count(b"\n") if out.exists() else 0
            if have >= at_lines:
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 4
    # a crash in the middle of a line, for good measure
    with out.open("ab") as fh:
        fh.write(b'{"id": "ex39", "text": "cut sh')
    r = subprocess.run([*base, "--resume"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    raw = out.read_bytes()
    assert raw.endswith(b"\n")
    rows = [json.loads(line) for line in raw.splitlines()]  # every line is whole JSON
    ids = [str(row["id"]) for row in rows]
    assert sorted(ids) == sorted(f"ex{i}" for i in range(n))  # each id exactly once
    assert all(row["text"] == f"You said: q{row['id'][2:]}" for row in rows)


def test_a_crash_during_the_resume_rewrite_leaves_the_old_output(tmp_path: Path, config_file: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": str(i), "question": f"q{i}"} for i in range(3)])
    out = tmp_path / "o.jsonl"
    ens = Hub(config_file).ensemble("echo")
    run_batch(ens, data, out, max_examples=2)
    before = out.read_bytes()

    def crash(*_: object) -> None:
        raise KeyboardInterrupt  # the process is stopped between writing the new file and renaming it

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        run_batch(ens, data, out, resume=True)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.jsonl")] == []  # no temporary file left
    monkeypatch.undo()
    assert run_batch(ens, data, out, resume=True).done == 1
    assert sorted(str(r["id"]) for r in lines(out)) == ["0", "1", "2"]
