"""Config validation, the hub, the batch runner and the CLI, over fake members (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ensemblehub_core._text import cut_text
from ensemblehub_core.batch import run_batch
from ensemblehub_core.cli import main
from ensemblehub_core.config import load_config, parse_config
from ensemblehub_core.exceptions import ConfigError
from ensemblehub_core.hub import Hub
from tests.fakes import STEPS

CONFIG = {
    "defaults": {"max_tokens": 200},
    "ensembles": {
        "pair": {
            "members": [
                {"name": "ramble", "backend": "function", "options": {"fn": "tests.fakes:rambler"}},
                {"name": "steps", "backend": "function", "options": {"fn": "tests.fakes:stepper"}},
            ],
            "scorer": {"type": "function", "options": {"fn": "tests.fakes:prefers_steps"}},
            "strategy": {"name": "segment", "segment_tokens": 16},
        },
        "echo": {
            "members": [{"name": "e", "backend": "function", "options": {"fn": "tests.fakes:echo"}}],
            "strategy": "single",
        },
    },
}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    p = tmp_path / "hub.yaml"
    p.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    return p


def test_hub_builds_named_ensembles_once(config_file: Path):
    hub = Hub(config_file)
    assert hub.names() == ["pair", "echo"] and hub.default_name == "pair"
    ens = hub.ensemble("pair")
    assert hub.ensemble("pair") is ens
    assert ens.generate("q").text == "".join(STEPS)


def test_unknown_ensemble_lists_configured(config_file: Path):
    with pytest.raises(ConfigError, match="configured: pair, echo"):
        Hub(config_file).ensemble("nope")


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"strategy": {"name": "segmnt"}}, "unknown strategy 'segmnt'; allowed:"),
        ({"strategy": {"name": "segment", "segment_tokenz": 3}}, "segment_tokenz"),
        ({"scorer": {"type": "judge", "member": "ghost"}}, "refers to member 'ghost'"),
        ({"members": []}, "members"),
    ],
)
def test_invalid_config_names_the_key(patch, message):
    data = json.loads(json.dumps(CONFIG))
    data["ensembles"]["pair"].update(patch)
    with pytest.raises(ConfigError, match=message):
        Hub(parse_config(data)).ensemble("pair")


def test_malformed_yaml_and_missing_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ensembles: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_packaged_default_config_is_valid():
    cfg = load_config()
    assert cfg.default_name in cfg.ensembles
    assert all(m.model for e in cfg.ensembles.values() for m in e.members if m.backend == "hf")


def test_cut_text_prefers_earliest_and_skips_leading_blank_delimiters():
    assert cut_text("\n\nabc\n\ndef", [], ["\n\n"]).text == "\n\nabc\n\n"  # type: ignore[union-attr]
    assert cut_text("abc STOP x\n\n", ["STOP"], ["\n\n"]).text == "abc "  # type: ignore[union-attr]
    assert cut_text("abc", ["x"], ["\n\n"]) is None


def _write_jsonl(path: Path, rows: list) -> None:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_batch_records_failures_and_resumes(tmp_path: Path, config_file: Path):
    data = tmp_path / "data.jsonl"
    _write_jsonl(data, [
        {"id": "a", "question": "one", "answer": "42"},
        "{not json",
        {"id": "c", "text": "no prompt field"},
        {"id": "d", "messages": [{"role": "user", "content": "hi"}]},
    ])
    out = tmp_path / "out.jsonl"
    ens = Hub(config_file).ensemble("echo")
    summary = run_batch(ens, data, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert (summary.done, summary.failed) == (2, 2)
    by_id = {r["id"]: r for r in rows}
    assert by_id["a"]["text"] == "You said: one" and by_id["a"]["example"] == {"answer": "42"}
    assert "invalid JSON" in by_id["line-2"]["error"]
    assert "needs one of the fields" in by_id["c"]["error"]
    assert by_id["d"]["text"] == "You said: hi"
    # resume: finished ids are skipped, failed ones retried (their old lines dropped), nothing lost or duplicated
    summary = run_batch(ens, data, out, resume=True)
    assert summary.skipped == 2 and summary.failed == 2
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == ["a", "c", "d", "line-2"]


def test_batch_resume_after_interruption(tmp_path: Path, config_file: Path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"question": f"q{i}"} for i in range(5)]))
    out = tmp_path / "out.jsonl"
    ens = Hub(config_file).ensemble("echo")
    run_batch(ens, data, out, max_examples=2)
    with out.open("a") as fh:
        fh.write('{"id": "2", "text": "trunc')  # a crash mid-write
    summary = run_batch(ens, data, out, resume=True)
    assert summary.skipped == 2 and summary.done == 3
    done = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(done) == ["0", "1", "2", "3", "4"]


def test_cli_run_and_models(tmp_path: Path, config_file: Path, capsys):
    data = tmp_path / "d.jsonl"
    _write_jsonl(data, [{"question": "x"}, {"question": "y"}, {"question": "z"}])
    out = tmp_path / "o.jsonl"
    rc = main(["run", "--config", str(config_file), "--ensemble", "echo", "--input", str(data),
               "--output", str(out), "--max-examples", "2"])
    assert rc == 0 and len(out.read_text().splitlines()) == 2
    assert main(["models", "--config", str(config_file)]) == 0
    text = capsys.readouterr().out
    assert "pair (default)" in text and "member  steps: function" in text


def test_cli_errors_are_one_line_not_tracebacks(tmp_path: Path, config_file: Path, capsys):
    assert main(["ask", "--config", str(config_file), "--ensemble", "ghost", "q"]) == 2
    assert capsys.readouterr().err.startswith("error: ensemble 'ghost' is not configured")
    assert main(["run", "--config", str(config_file), "--input", str(tmp_path / "none.jsonl"),
                 "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["folder", "embedded:ghost"]) == 2
    assert "unknown embedded model 'ghost'" in capsys.readouterr().err


def test_cli_folder_prints_a_model_folder(tmp_path: Path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["folder", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path)


def test_cli_ask_prints_trace(config_file: Path, capsys):
    assert main(["ask", "--config", str(config_file), "What is 6 * 7?"]) == 0
    out = capsys.readouterr().out
    assert "round 0: winner steps" in out and "The answer is 42." in out


def test_run_ensemble_reuses_the_hub(config_file: Path):
    from ensemblehub_core import Hub, run_ensemble

    r = run_ensemble("hello", ensemble="echo", config=config_file)
    assert r.text == "You said: hello"
    hub = Hub.shared(config_file)
    built = hub.ensemble("echo")
    run_ensemble("again", ensemble="echo", config=config_file)
    assert Hub.shared(str(config_file)) is hub and hub.ensemble("echo") is built
