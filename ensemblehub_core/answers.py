"""Final-answer extraction and normalisation for voting (self-consistency).

An extractor turns a full answer into its final answer (or None when it has none); `answer_key` normalises it
so that equal answers compare equal: numbers numerically (``"1,000"``, ``"1000.0"`` and ``"\\frac{2000}{2}"``
are one answer), text case- and space-insensitively.

Extractors by name: ``boxed`` (the last ``\\boxed{...}``), ``last_number``, ``choice`` (a multiple-choice
letter), ``exact`` (the whole answer), ``auto`` (boxed, else an explicit "answer is ..." statement, else the
last number, else the whole answer), or ``module:function`` naming any callable ``str -> str | None``. An
extractor that also takes a ``tools`` keyword is given the request's tools (`with_tools`), as
`ensemblehub_core.tools.extract_tool_calls` needs them to read an answer's calls.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING

from ensemblehub_core.exceptions import ConfigError
from ensemblehub_core.registry import import_callable

if TYPE_CHECKING:
    from ensemblehub_core.tools import ToolSpec

__all__ = [
    "EXTRACTORS",
    "Extractor",
    "answer_key",
    "extract_auto",
    "extract_boxed",
    "extract_choice",
    "extract_exact",
    "extract_last_number",
    "get_extractor",
    "parse_number",
    "with_tools",
]

#: Full answer text → final answer, or None when there is none.
Extractor = Callable[[str], str | None]

_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*(.+?)(?:\.\s|\.?$|\n)", re.IGNORECASE
)


def extract_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    depth, i = 1, starts[-1]
    begin = i
    while i < len(text):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i].strip()
        i += 1
    return None


def extract_last_number(text: str) -> str | None:
    """The last number written in the text (``1,234.5``, ``-3``, ``7/8``)."""
    found = _NUMBER.findall(_FRAC.sub(r"\1/\2", text))
    return found[-1].strip() if found else None


def extract_choice(text: str, letters: str = "ABCDE") -> str | None:
    """A multiple-choice letter: "answer is (B)", "Answer: B", "(B)" or a "B." line; the last one wins."""
    cls = f"[{re.escape(letters)}]"
    patterns = [
        rf"answer\s*(?:is|:)?\s*:?\s*\(?({cls})\)?(?![A-Za-z])",
        rf"\(({cls})\)",
        rf"(?:^|\n)\s*({cls})(?:[.):]|\s*$)",
        rf"(?<![A-Za-z])({cls})(?![A-Za-z])",
    ]
    for pattern in patterns:
        found = re.findall(pattern, text, flags=re.IGNORECASE if pattern is patterns[0] else 0)
        if found:
            return str(found[-1]).upper()
    return None


def extract_exact(text: str) -> str | None:
    """The whole answer (normalised by `answer_key`); None when blank."""
    return text.strip() or None


def extract_auto(text: str) -> str | None:
    """Boxed, else "the answer is ...", else the last number, else the whole answer."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    stated = _ANSWER_IS.findall(text)
    if stated:
        value = stated[-1].strip().strip("*$ ")
        number = extract_last_number(value)
        return number if number is not None and len(value) <= len(number) + 12 else value
    return extract_last_number(text) or extract_exact(text)


EXTRACTORS: dict[str, Extractor] = {
    "auto": extract_auto,
    "boxed": extract_boxed,
    "last_number": extract_last_number,
    "choice": extract_choice,
    "exact": extract_exact,
}


def get_extractor(spec: str | Extractor, letters: str = "ABCDE") -> Extractor:
    """An extractor by name, ``module:function``, or a callable passed as is.

    Raises:
        ConfigError: unknown name or a path that does not import.
    """
    if callable(spec):
        return spec
    if spec == "choice":
        return lambda text: extract_choice(text, letters)
    if spec in EXTRACTORS:
        return EXTRACTORS[spec]
    if ":" in spec:
        return import_callable(spec, "strategy 'vote' extractor")
    raise ConfigError(
        f"unknown answer extractor '{spec}'; use one of {', '.join(EXTRACTORS)} or 'module:function'"
    )


def with_tools(extract: Extractor, tools: ToolSpec | None) -> Extractor:
    """``extract`` given the request's tools, when it takes a ``tools`` keyword; any other extractor reads the
    text alone and is returned as it is.

    Args:
        extract: An extractor (see `get_extractor`).
        tools: The request's tools (None when it offered none).
    """
    if tools is None or not _takes_tools(extract):
        return extract
    takes_tools: Callable[..., str | None] = extract  # checked just above: it has a ``tools`` parameter
    return functools.partial(takes_tools, tools=tools)


def _takes_tools(extract: Extractor) -> bool:
    try:
        param = inspect.signature(extract).parameters.get("tools")
    except (TypeError, ValueError):  # a callable without a signature Python can read (some builtins)
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def parse_number(text: str) -> Fraction | None:
    """``text`` as an exact number when it is one (commas, ``$``, ``%``, ``\\frac``, ``a/b`` allowed)."""
    s = _FRAC.sub(r"(\1)/(\2)", text.strip())
    s = re.sub(r"^\\text\{(.*)\}$", r"\1", s)
    s = (
        s.replace(",", "")
        .replace("$", "")
        .replace("\\%", "")
        .replace("%", "")
        .replace("(", "")
        .replace(")", "")
    )
    s = s.strip().rstrip(".")
    if not re.fullmatch(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:\s*/\s*-?\d+(?:\.\d*)?)?", s):
        return None
    try:
        num, _, den = s.partition("/")
        value = Fraction(num.strip())
        return value / Fraction(den.strip()) if den else value
    except (ValueError, ZeroDivisionError):
        return None


def answer_key(answer: str) -> str:
    """The form answers are compared in: a canonical number, else lower-cased text with spaces collapsed."""
    number = parse_number(answer)
    if number is not None:
        return (
            str(number.numerator) if number.denominator == 1 else f"{number.numerator}/{number.denominator}"
        )
    s = re.sub(r"^\\text\{(.*)\}$", r"\1", answer.strip())
    s = s.strip("$ ").rstrip(".").strip()
    return re.sub(r"\s+", " ", s).lower()
