"""The /ui page in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, through Selenium).

`make test` installs the browser when it is missing; where it cannot be installed these tests skip, loudly.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import FAST_ENSEMBLES, Served, fn_member, running

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NO_BROWSER = ("!!!!!!!! SKIPPED the /ui browser tests: {why}; install them with "
              "`apt-get install -y chromium chromium-driver` (as root; `make test` tries) !!!!!!!!")

PACED = {
    "paced": {
        "description": "two fake members, 0.3 s a round; the longer segment wins",
        "members": [fn_member("stepper", "paced_steps"), fn_member("echoer", "paced_echo")],
        "scorer": {"type": "function", "options": {"fn": "tests.server.fakes:longest"}},
        "strategy": {"name": "segment", "segment_tokens": 8},
    },
    "chatty": {"members": [fn_member("t", "turns")], "strategy": "single"},
    "voters": {
        "description": "three fake members; two say Paris",
        "members": [fn_member("one", "capital"), fn_member("two", "capital"), fn_member("three", "echo")],
        "strategy": "vote",
    },
}


def ui_app(**kwargs: Any) -> Any:
    """The fake ensembles and `paced`, served with ``create_app(..., **kwargs)``."""
    from ensemblehub_core.config import parse_config
    from ensemblehub_integrations.server import create_app

    cfg = parse_config({"defaults": {"max_tokens": 96}, "default_ensemble": "paced",
                        "ensembles": {**FAST_ENSEMBLES, **PACED}})
    return create_app(cfg, **kwargs)


def new_browser() -> Any:
    """A headless Chromium with a fresh profile, or a loud skip when the browser or Selenium is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(NO_BROWSER.format(why="selenium is not installed (pip install -e '.[dev]')"))
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip(NO_BROWSER.format(why="chromium or chromedriver is not on PATH"))
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='ensemblehub-ui-')}",
                 "--window-size=1280,1000"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    b = new_browser()
    try:
        yield b
    finally:
        b.quit()


@pytest.fixture(scope="module")
def ui_server() -> Iterator[Served]:
    with running(ui_app(api_key="")) as served:
        yield served


def wait_for(browser: Any, condition: Any, timeout: float = 20) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda b: condition(b))


def css(browser: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(browser.find_elements(By.CSS_SELECTOR, selector))


def status(browser: Any) -> str:
    return str(browser.find_element("id", "status").text)


def open_page(browser: Any, url: str) -> None:
    browser.get(f"{url}/ui/")
    wait_for(browser, lambda b: status(b) and not status(b).startswith("loading"))


def pick(browser: Any, ensemble: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "ensemble")).select_by_value(ensemble)


def test_rounds_arrive_one_by_one_and_match_the_api_trace(browser: Any, ui_server: Served) -> None:
    import httpx2

    question = "Hi"  # shorter than every step, so the stepper wins three rounds
    open_page(browser, ui_server.url)
    pick(browser, "paced")
    # Note when each round's card appears, to see that they come one at a time rather than all at the end.
    browser.execute_script("""
        window.roundTimes = [];
        new MutationObserver((records) => { for (const r of records) for (const n of r.addedNodes)
            if (n.classList && n.classList.contains('round')) window.roundTimes.push(performance.now()); })
          .observe(document.getElementById('rounds'), {childList: true});""")
    box = browser.find_element("id", "question")
    box.clear()
    box.send_keys(question)
    browser.find_element("id", "ask").click()
    wait_for(browser, lambda b: status(b).startswith("done"), timeout=30)

    body = httpx2.post(f"{ui_server.url}/v1/chat/completions", timeout=30, json={
        "model": "paced", "messages": [{"role": "user", "content": question}], "max_tokens": 96,
        "ensemble_trace": "full"}).json()
    rounds = body["ensemble_trace"][0]["rounds"]
    cards = css(browser, "#rounds .round")
    assert len(rounds) >= 3 and len(cards) == len(rounds)
    times = browser.execute_script("return window.roundTimes")
    assert len(times) == len(rounds)
    # 0.3 s a round: the cards come one at a time, not together at the end (a loaded machine may delay one).
    assert all(b > a for a, b in itertools.pairwise(times)), times
    assert times[-1] - times[0] > 150 * (len(times) - 1), times
    for card, api in zip(cards, rounds, strict=True):
        assert card.get_attribute("data-winner") == api["winner"]
        columns = card.find_elements("css selector", ".candidate")
        assert [c.get_attribute("data-member") for c in columns] == [c["member"] for c in api["candidates"]]
        winners = [c.get_attribute("data-member") for c in columns if "winner" in c.get_attribute("class")]
        assert winners == [api["winner"]]
        seen: list[Any] = []
        for column, cand in zip(columns, api["candidates"], strict=True):
            assert column.find_element("css selector", ".text").text == cand["text"].strip()
            combined = column.find_element("css selector", ".combined").text.removeprefix("combined: ")
            assert float(combined) == api["scores"][cand["member"]]
            (scorer,) = column.find_elements("css selector", ".score:not(.combined)")
            name, value = scorer.text.rsplit(": ", 1)
            assert float(value) == api["scorer_scores"][name][len(seen)]
            seen.append(cand)
    answer = browser.find_element("id", "answer").text
    assert answer.strip() == body["choices"][0]["message"]["content"].strip()
    usage = {r.find_elements("css selector", "td")[0].text: r.find_elements("css selector", "td")[1].text
             for r in css(browser, "#usage tr")[1:]}
    assert usage["stepper"] == str(body["usage"]["member_tokens"]["stepper"])


def test_a_vote_shows_its_table(browser: Any, ui_server: Served) -> None:
    import httpx2

    body = httpx2.post(f"{ui_server.url}/v1/chat/completions", timeout=30, json={
        "model": "voters", "messages": [{"role": "user", "content": "France?"}], "ensemble_trace": True}).json()
    votes = body["ensemble_trace"][0]["votes"]
    assert votes[0]["count"] == 2 and sorted(votes[0]["members"]) == ["one", "two"]
    open_page(browser, ui_server.url)
    pick(browser, "voters")
    browser.find_element("id", "ask").click()
    wait_for(browser, lambda b: status(b).startswith("done"))
    rows = css(browser, "#votes tr")[1:]
    assert [r.find_elements("css selector", "td")[1].text for r in rows] == [str(v["count"]) for v in votes]
    (card,) = css(browser, "#rounds .round")
    assert len(card.find_elements("css selector", ".candidate")) == 3


def test_a_chat_sends_the_earlier_turns(browser: Any, ui_server: Served) -> None:
    open_page(browser, ui_server.url)
    pick(browser, "chatty")
    box = browser.find_element("id", "question")

    def ask(question: str) -> str:
        box.clear()
        box.send_keys(question)
        browser.find_element("id", "ask").click()
        wait_for(browser, lambda b: status(b).startswith("done"))
        return str(browser.find_element("id", "answer").text).strip()

    assert ask("One?") == "1 user / 0 assistant turns; last: One?"  # a single question unless asked to chat
    assert ask("Two?") == "1 user / 0 assistant turns; last: Two?"
    assert css(browser, "#conversation .turn") == []
    browser.find_element("id", "chat").click()
    assert ask("Three?") == "1 user / 0 assistant turns; last: Three?"
    assert ask("Four?") == "2 user / 1 assistant turns; last: Four?"
    kept = [t.text for t in css(browser, "#conversation .turn")]
    assert kept == ["user: Three?", "assistant: 1 user / 0 assistant turns; last: Three?",
                    "user: Four?", "assistant: 2 user / 1 assistant turns; last: Four?"]
    browser.find_element("id", "new-chat").click()
    assert css(browser, "#conversation .turn") == []
    assert ask("Five?") == "1 user / 0 assistant turns; last: Five?"


def test_an_error_mid_stream_stays_on_screen_and_is_not_kept_as_a_turn(browser: Any, ui_server: Served) -> None:
    open_page(browser, ui_server.url)
    pick(browser, "flaky")  # one good segment, then the member fails
    browser.find_element("id", "chat").click()
    browser.find_element("id", "ask").click()
    wait_for(browser, lambda b: status(b).startswith("error after"))
    assert "the backend went away" in status(browser)
    assert "First segment." in browser.find_element("id", "answer").text
    assert css(browser, "#conversation .turn") == []


def run_rows(system: str, answers: dict[str, str]) -> list[dict[str, Any]]:
    """`ensemblehub run` lines for questions q0..q5 (reference answers 0..5), answered with ``answers``."""
    rows = []
    for i in range(6):
        text = answers.get(f"q{i}", f"I think it is {i}.")
        rows.append({"id": f"q{i}", "example": {"question": f"What is {i} + 0?", "answer": str(i)},
                     "text": text, "finish_reason": "stop", "ensemble": system, "strategy": "segment",
                     "elapsed_s": 0.5, "usage": {"member_tokens": {"a": 5, "b": 3}},
                     "trace": [{"round": 0, "winner": "a" if i % 2 else "b", "scores": {"a": 0.5, "b": 0.4}},
                               {"round": 1, "winner": "a", "scores": {"a": 0.9, "b": 0.1}}]})
    return rows


def test_comparer_counts_accuracy_like_the_engine(browser: Any, ui_server: Served, tmp_path: Path) -> None:
    from ensemblehub_core.answers import answer_key, extract_auto

    runs = {
        "first.jsonl": run_rows("first", {"q1": "The answer is 7.", "q4": "\\boxed{4}"}),
        "second.jsonl": run_rows("second", {"q2": "It is 2,000.", "q3": "answer is three", "q5": "The answer is 5."}),
    }
    paths = []
    for name, rows in runs.items():
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
        paths.append(str(path))
    open_page(browser, ui_server.url)
    browser.find_element("id", "tab-compare").click()
    browser.find_element("id", "run-files").send_keys("\n".join(paths))
    wait_for(browser, lambda b: len(css(b, "#accuracy tr")) == 3)

    def right(row: dict[str, Any]) -> bool:
        given = extract_auto(row["text"])
        return given is not None and answer_key(given) == answer_key(row["example"]["answer"])

    for name, rows in runs.items():
        (line,) = css(browser, f'#accuracy tr[data-system="{name}"]')
        correct = sum(right(r) for r in rows)
        assert line.find_element("css selector", ".n-correct").text == str(correct)
        assert line.find_element("css selector", ".n-judged").text == str(len(rows))
        assert line.find_element("css selector", ".accuracy").text == f"{100 * correct / len(rows):.1f}%"
    first, second = ({r["id"]: right(r) for r in rows} for rows in runs.values())
    (diff,) = css(browser, '#diffs .diff[data-right="first.jsonl"][data-wrong="second.jsonl"]')
    shown = {a.get_attribute("data-id") for a in diff.find_elements("css selector", "a")}
    assert shown == {i for i in first if first[i] and not second[i]}
    assert "2 unreadable lines skipped" in browser.find_element("id", "compare-status").text
    assert len(css(browser, "#charts svg rect")) == 2 * 3  # two runs: round 0 split a/b, round 1 all a
    css(browser, "#items tr.item")[1].click()
    assert "Item q1" in browser.find_element("id", "item-detail").text


def test_with_an_api_key_the_page_loads_but_its_requests_need_the_key(browser: Any) -> None:
    import httpx2

    with running(ui_app(api_key="sekrit-key")) as served:
        assert httpx2.get(f"{served.url}/ui/").status_code == 200
        assert httpx2.get(f"{served.url}/v1/models").status_code == 401
        open_page(browser, served.url)
        assert status(browser).startswith("refused: 401 invalid_api_key")
        key = browser.find_element("id", "api-key")
        key.send_keys("wrong")
        browser.find_element("id", "load-models").click()
        wait_for(browser, lambda b: status(b).startswith("refused: 401"))
        key.clear()
        key.send_keys("sekrit-key")
        browser.find_element("id", "load-models").click()
        wait_for(browser, lambda b: status(b).endswith("ensembles") and not status(b).startswith("loading"))
        pick(browser, "echo")
        key.clear()
        browser.find_element("id", "ask").click()
        wait_for(browser, lambda b: status(b).startswith("refused: 401 invalid_api_key"))
        assert css(browser, "#rounds .round") == []


def test_the_page_can_be_turned_off() -> None:
    import httpx2

    from ensemblehub_core.config import parse_config
    from ensemblehub_integrations.server import create_app

    with running(ui_app(api_key="", ui=False)) as served:
        assert httpx2.get(f"{served.url}/ui/").status_code == 404
    cfg = parse_config({"ensembles": {"echo": {"members": [fn_member("e", "echo")], "strategy": "single"}},
                        "server": {"ui": False}})
    with running(create_app(cfg, api_key="")) as served:
        assert httpx2.get(f"{served.url}/ui/").status_code == 404
        assert httpx2.get(f"{served.url}/v1/models").status_code == 200
