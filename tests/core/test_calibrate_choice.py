"""`ensemblehub calibrate` on a ``choice`` ensemble: member weights of the log-linear pool fitted on a dev set.

The fit itself is checked fast on readings with a known answer (one informative member, one that reads noise);
the command runs real small members (Qwen2.5-Coder-0.5B and SmolLM2-135M) and is marked slow.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from ensemblehub_core import calibration as cal
from ensemblehub_core.cli import main
from ensemblehub_core.hub import Hub
from ensemblehub_core.types import Message


def _readings(n: int, seed: int) -> list[cal.Reading]:
    """Four-option items: ``good`` gives the right option more mass 3 times in 4, ``noise`` reads at random."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        answer = rng.randrange(4)
        favoured = answer if rng.random() < 0.75 else rng.randrange(4)
        good = [-0.3 if o == favoured else -2.0 + rng.gauss(0, 0.3) for o in range(4)]
        noise = [rng.gauss(-1.4, 1.5) for _ in range(4)]
        out.append(cal.Reading(id=f"q{i}", members={"good": good, "noise": noise}, answer=answer))
    return out


def test_fit_gives_the_noise_member_little_say():
    fitted, held = _readings(60, seed=0), _readings(200, seed=1)
    weights = cal.fit_pool(fitted, ["good", "noise"])
    assert weights["good"] > 1.0 and weights["noise"] < 0.2 * weights["good"], weights
    equal = cal.pool_accuracy(held, {"good": 1.0, "noise": 1.0})
    assert cal.pool_accuracy(held, weights) >= cal.pool_accuracy(held, {"good": 1.0}) > equal


def test_pool_pick_ties_go_to_the_earlier_option_and_unweighted_members_have_no_say():
    reading = cal.Reading(id="q", members={"a": [-1.0, -1.0, -3.0], "b": [-5.0, -0.1, -0.1]}, answer=1)
    assert cal.pool_pick(reading, {"a": 1.0}) == 0
    assert cal.pool_pick(reading, {"a": 1.0, "b": 1.0}) == 1
    assert cal.pool_pick(reading, {"b": 1.0, "absent": 3.0}) == 1
    assert cal.pool_pick(reading, {"absent": 1.0, "a": 0.0}) is None
    # A member that failed on an item (absent from its reading) is left out of the fit on that item.
    partial = cal.Reading(id="p", members={"a": [-0.1, -2.0, -2.0]}, answer=0)
    assert set(cal.fit_pool([reading, partial], ["a", "b"])) == {"a", "b"}


def test_apply_writes_the_weights_into_the_strategy_whatever_form_it_had():
    report = cal.CalibrationReport(pool_weights={"a": 0.5, "b": 1.5})
    for strategy in ("choice", {"name": "choice", "shifts": 2, "weights": {"a": 9.0}}):
        data = {"ensembles": {"e": {"members": [], "strategy": strategy}}}
        out = cal.apply(data, "e", report)["ensembles"]["e"]["strategy"]
        assert out["name"] == "choice" and out["weights"] == {"a": 0.5, "b": 1.5}
        assert data["ensembles"]["e"]["strategy"] == strategy  # the input document is left as it was
    assert out["shifts"] == 2


CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Russia", "Moscow"), ("Canada", "Ottawa"),
            ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Norway", "Oslo"), ("Austria", "Vienna")]


def _dev(path: Path) -> Path:
    rng = random.Random(0)
    cities = [c for _, c in CAPITALS]
    rows = []
    for i, (country, city) in enumerate(CAPITALS):
        options = [*rng.sample([c for c in cities if c != city], 3), city]
        rng.shuffle(options)
        lines = "\n".join(f"{'ABCD'[k]}. {text}" for k, text in enumerate(options))
        question = f"What is the capital of {country}?\n\n{lines}\n\nAnswer with the letter."
        rows.append({"id": f"c{i}", "question": question, "answer": "ABCD"[options.index(city)]})
    rows.append({"id": "open", "question": "What is the capital of Peru?", "answer": "Lima"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.slow
def test_calibrate_fits_choice_weights_reports_heldout_and_the_written_config_uses_them(tmp_path, capsys):
    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump({"ensembles": {"pick": {
        "members": [{"name": "qwen", "model": "embedded:qwen2.5-coder-0.5b-instruct"},
                    {"name": "smol", "model": "embedded:smollm2-135m-instruct"}],
        "strategy": {"name": "choice", "shifts": 2},
    }}}), encoding="utf-8")
    dev = _dev(tmp_path / "dev.jsonl")
    out = tmp_path / "calibrated.yaml"
    assert main(["calibrate", "--config", str(config), "--dev", str(dev), "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 item(s) without lettered options" in captured.err and "open" in captured.err
    assert "accuracy on 4 held-out items (pooled option choice)" in captured.out, captured.out
    for line in ("qwen alone:", "smol alone:", "weights as configured:", "weights fitted:"):
        assert line in captured.out

    strategy = yaml.safe_load(out.read_text())["ensembles"]["pick"]["strategy"]
    assert strategy["name"] == "choice" and strategy["shifts"] == 2
    weights = strategy["weights"]
    assert set(weights) == {"qwen", "smol"} and all(w >= 0 for w in weights.values()) and sum(weights.values()) > 0

    # The calibrated ensemble pools with the fitted weights and picks what the fitted pool picks.
    ens = Hub(out).ensemble("pick")
    item = json.loads(dev.read_text().splitlines()[0])
    result = ens.generate(item["question"], max_tokens=8)
    total = sum(weights.values())
    assert result.extra["choice"]["weights"] == pytest.approx({n: w / total for n, w in weights.items()}, abs=1e-3)
    (reading,), _ = cal.read_choices(ens.members, [("c0", [Message(role="user", content=item["question"])],
                                                    item["answer"])], shifts=2)
    pick = cal.pool_pick(reading, weights)
    assert pick is not None and result.text.startswith("ABCD"[pick] + ".")
