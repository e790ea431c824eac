"""`ensemblehub calibrate` over fake members whose confidence misleads: one always right but unsure, one always
wrong but sure. Raw confidence picks the wrong one; calibrated per member, the right one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ensemblehub_core import calibration as cal
from ensemblehub_core.cli import main
from ensemblehub_core.exceptions import InputError
from ensemblehub_core.hub import Hub
from ensemblehub_core.scorers.base import ScoreRequest
from ensemblehub_core.types import Candidate, Message

CONFIG = {
    "ensembles": {
        "pair": {
            "members": [
                {"name": "unsure", "backend": "function",
                 "options": {"fn": "tests.fakes:adds_right", "token_logprob": -2.0}},
                {"name": "sure", "backend": "function",
                 "options": {"fn": "tests.fakes:adds_wrong", "token_logprob": -0.1}},
            ],
            "scorer": [{"type": "confidence"}],
            "strategy": "best_of_n",
        },
    },
}


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + {2 * i}?", "answer": str(3 * i)})
                           + "\n" for i in range(1, 41)), encoding="utf-8")
    return config, dev


def test_calibrate_fits_reports_on_heldout_items_and_writes_a_config_that_loads(files, tmp_path, capsys):
    config, dev = files
    out = tmp_path / "calibrated.yaml"
    assert main(["calibrate", "--config", str(config), "--ensemble", "pair", "--dev", str(dev),
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fitted on 28 items, accuracy on 12 held-out items" in printed
    assert "panel as configured: 0.000" in printed and "panel calibrated:    1.000" in printed

    before = Hub(config).ensemble("pair").generate("What is 20 + 22?")
    after_hub = Hub(out)
    after = after_hub.ensemble("pair").generate("What is 20 + 22?")
    assert "43" in before.text and "42" in after.text

    # The reloaded config scores exactly as the fitted calibration says.
    written = yaml.safe_load(out.read_text())["ensembles"]["pair"]["scorer"][0]["options"]["calibration"]
    (scorer, _), = after_hub.ensemble("pair").panel.scorers  # type: ignore[union-attr]
    cands = [Candidate(member="unsure", text="x", token_logprobs=[-2.0]),
             Candidate(member="sure", text="y", token_logprobs=[-0.1])]
    got = scorer.score(ScoreRequest(messages=[Message(role="user", content="q")], prefix="", candidates=cands))
    assert got == pytest.approx([written["unsure"][0] * -2.0 + written["unsure"][1],
                                 written["sure"][0] * -0.1 + written["sure"][1]])
    assert got[0] > got[1]  # type: ignore[operator]

    # Calibrating the calibrated config again: the panel as configured already picks the right member.
    assert main(["calibrate", "--config", str(out), "--ensemble", "pair", "--dev", str(dev),
                 "--output", str(tmp_path / "again.yaml")]) == 0
    assert "panel as configured: 1.000" in capsys.readouterr().out


def test_calibrate_refuses_to_report_on_items_it_fitted_on(files, tmp_path, capsys):
    config, dev = files
    for share in ("0", "1", "0.001"):
        code = main(["calibrate", "--config", str(config), "--dev", str(dev), "--heldout", share,
                     "--output", str(tmp_path / "c.yaml")])
        assert code == 2
        assert "held-out" in capsys.readouterr().err
    fit_ids, held = cal.split([f"q{i}" for i in range(10)], 0.3)
    assert not set(fit_ids) & set(held) and len(fit_ids) + len(held) == 10
    with pytest.raises(InputError, match="held-out"):
        cal.split(["a"], 0.5)


def test_calibrate_needs_the_answer_field(files, tmp_path, capsys):
    config, _ = files
    dev = tmp_path / "noanswer.jsonl"
    dev.write_text(json.dumps({"question": "What is 1 + 2?"}) + "\n", encoding="utf-8")
    assert main(["calibrate", "--config", str(config), "--dev", str(dev), "--output", str(tmp_path / "c.yaml")]) == 2
    assert "--answer-field" in capsys.readouterr().err


def test_calibrate_warns_when_the_fit_picks_worse_than_a_member_alone(files, tmp_path, capsys):
    # References chosen so the fitted part says "trust the sure member" and the held-out part says the opposite:
    # the fit cannot see it, and the report must say that the calibrated panel loses to the other member alone.
    config, _ = files
    ids = [f"q{i}" for i in range(1, 41)]
    _, held = cal.split(ids, 0.3)
    dev = tmp_path / "misleading.jsonl"
    dev.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + {2 * i}?",
                                       "answer": str(3 * i if f"q{i}" in held else 3 * i + 1)}) + "\n"
                           for i in range(1, 41)), encoding="utf-8")
    assert main(["calibrate", "--config", str(config), "--ensemble", "pair", "--dev", str(dev),
                 "--output", str(tmp_path / "c.yaml")]) == 0
    out, err = capsys.readouterr()
    assert "unsure alone: 1.000" in out and "panel calibrated:    0.000" in out
    assert "warning: on the held-out items the calibrated panel (0.000) picks worse than unsure alone (1.000)" in err


def test_calibrate_does_not_warn_when_the_fit_helps(files, tmp_path, capsys):
    config, dev = files
    assert main(["calibrate", "--config", str(config), "--ensemble", "pair", "--dev", str(dev),
                 "--output", str(tmp_path / "c.yaml")]) == 0
    assert "warning" not in capsys.readouterr().err


def _items(n: int) -> list[tuple[str, list[Message], str]]:
    return [(f"q{i}", [Message(role="user", content=f"What is {i} + {2 * i}?")], str(3 * i)) for i in range(1, n + 1)]


def _right(text: str, ref: str) -> bool:
    return text.rstrip(".").split()[-1] == ref


def test_collect_in_batches_gives_the_records_of_one_item_at_a_time():
    import asyncio

    from ensemblehub_core.generators.function import FunctionGenerator
    from tests.fakes import adds_right, adds_wrong

    members = {"unsure": FunctionGenerator("unsure", adds_right, token_logprob=-2.0),
               "sure": FunctionGenerator("sure", adds_wrong, token_logprob=-0.1)}
    alone = asyncio.run(cal.collect(members, None, _items(7), _right, 16, batch=1))
    seen: list[tuple[int, int]] = []
    batched = asyncio.run(cal.collect(members, None, _items(7), _right, 16,
                                      progress=lambda d, t: seen.append((d, t)), batch=3))
    assert [r.id for r in batched] == [f"q{i}" for i in range(1, 8)]
    assert [[c.text for c in r.candidates] for r in batched] == [[c.text for c in r.candidates] for r in alone]
    assert [r.correct for r in batched] == [[True, False]] * 7
    assert seen == [(i, 7) for i in range(1, 8)]  # progress after every item, not every batch
    with pytest.raises(InputError, match="at least 1"):
        asyncio.run(cal.collect(members, None, _items(2), _right, 16, batch=0))


def test_collect_keeps_a_batch_whose_one_item_fails():
    # The batch fails as a whole; its items are answered one at a time, and only the item that fails alone
    # costs the member's answer.
    import asyncio

    from ensemblehub_core.generators.function import FunctionGenerator
    from tests.fakes import adds_right

    def breaks_on_five(messages, prefix, request):
        if "5 + 10" in messages[-1].content:
            raise RuntimeError("this prompt breaks the member")
        return adds_right(messages, prefix, request)

    members = {"fragile": FunctionGenerator("fragile", breaks_on_five)}
    records = asyncio.run(cal.collect(members, None, _items(6), _right, 16, batch=4))
    assert [r.correct for r in records] == [[True], [True], [True], [True], [False], [True]]
    failed = records[4].candidates[0]
    assert failed.finish_reason == "error" and "breaks the member" in (failed.error or "")


def test_calibrate_rejects_a_batch_below_one(files, tmp_path, capsys):
    config, dev = files
    assert main(["calibrate", "--config", str(config), "--dev", str(dev), "--batch", "0",
                 "--output", str(tmp_path / "c.yaml")]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err
