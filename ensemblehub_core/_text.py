"""Text helpers shared by generators and strategies: stop strings, step delimiters, repetition, and checks
of text that comes from outside (lone surrogates, credentials in URLs)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Cut", "cut_text", "find_surrogate", "is_repetitive", "redact_userinfo", "settled_text"]


@dataclass(kw_only=True)
class Cut:
    """Where a piece of generated text must end, and why."""

    text: str
    reason: str  # "stop" | "delimiter"


def cut_text(text: str, stop: list[str], delimiters: list[str]) -> Cut | None:
    """Find the earliest stop string or step delimiter in freshly generated ``text``.

    A stop string ends the answer and is dropped. A delimiter ends the segment and is kept; it only counts once
    the segment holds some non-blank text, so a segment that opens with blank lines is not an empty step.

    Returns:
        The cut text and its reason, or None when the text may go on.
    """
    found: list[tuple[int, int, Cut]] = []
    for s in stop:
        i = text.find(s) if s else -1
        if i != -1:
            found.append((i, 0, Cut(text=text[:i], reason="stop")))
    for d in delimiters:
        i = text.find(d) if d else -1
        while i != -1 and not text[:i].strip():
            i = text.find(d, i + 1)
        if i != -1:
            found.append((i, 1, Cut(text=text[: i + len(d)], reason="delimiter")))
    return min(found, key=lambda f: (f[0], f[1]))[2] if found else None


def settled_text(text: str, ends: list[str]) -> str:
    """The part of text still being generated that cannot change: without a tail that may be the start of
    one of ``ends`` (stop strings, a member's end strings) or an unfinished UTF-8 character."""
    keep = len(text)
    for end in ends:
        for n in range(min(len(end) - 1, len(text)), 0, -1):
            if text.endswith(end[:n]):
                keep = min(keep, len(text) - n)
                break
    settled = text[:keep]
    return settled.rstrip("\ufffd")


def is_repetitive(segments: list[str], window: int = 3) -> bool:
    """True when the last ``window`` accepted segments are the same non-empty text (a degenerate loop)."""
    if len(segments) < window:
        return False
    tail = [s.strip() for s in segments[-window:]]
    return bool(tail[0]) and all(t == tail[0] for t in tail)


def find_surrogate(value: Any, path: str = "") -> str | None:
    """The dotted path (``messages.0.content``) of the first string in ``value`` that holds a lone UTF-16
    surrogate, or None.

    JSON may escape one (``"\\ud800"``) and Python decodes it into a string that no tokenizer, file or socket
    can encode as UTF-8; such text is refused where it enters rather than failing deep inside a member.
    Dict keys are checked too (the path then ends at the key).
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(value)"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            key = str(k).encode("utf-8", "backslashreplace").decode("utf-8")  # printable even when it is bad
            sub = f"{path}.{key}" if path else key
            if find_surrogate(str(k)) is not None:
                return sub
            found = find_surrogate(v, sub)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = find_surrogate(v, f"{path}.{i}" if path else str(i))
            if found is not None:
                return found
    return None


_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact_userinfo(text: str) -> str:
    """``text`` with the ``user:password@`` part of every URL in it replaced by ``***@``."""
    return _USERINFO.sub(r"\1***@", text)
