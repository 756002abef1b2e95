"""Final answers: extract them from model output, normalize gold answers, and decide equivalence.

``extract_answer`` takes the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in a solution,
falling back to GSM8K's ``#### 18`` and to "The answer is X". ``normalize_gold`` turns a benchmark's gold
answer (GSM8K's worked answer, AMC's float, MATH's LaTeX) into one answer string. ``is_equivalent``
compares gold and prediction with math-verify, gold first, as the paper does.

math-verify bounds its parsing and comparison time with ``signal.alarm``, which only works in the main
thread of the main interpreter; elsewhere it raises. ``is_equivalent`` therefore disables those timeouts
when it runs outside the main thread (a Prefect task, a thread pool): correct there, but unbounded. Where
time bounds matter, grade in the main thread or in worker processes (whose main threads keep them).
"""

from __future__ import annotations

import functools
import math
import re
import threading
from decimal import Decimal
from typing import Any, Literal

GoldFormat = Literal["auto", "gsm8k", "float", "latex", "plain"]

TIMEOUT_SECONDS = 5
"""math-verify's per-parse and per-comparison limit where signals work (main thread)."""

_BOX_OPENERS = ("\\boxed{", "\\fbox{")
_GSM8K = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(r"(?:the\s+final\s+answer|the\s+answer)\s+is\s*:?\s*([^\n]+)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.\s")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


# --------------------------------------------------------------------------------------------- extraction


def _balanced(text: str, start: int) -> int | None:
    """Index of the ``}`` closing the ``{`` just before ``start``, or None if it never closes."""
    depth = 1
    for i in range(start, len(text)):
        char = text[i]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def unwrap_box(text: str) -> str:
    """``\\boxed{x}`` -> ``x`` when one box spans all of ``text`` (spaces aside); otherwise ``text``."""
    text = text.strip()
    for opener in _BOX_OPENERS:
        if text.startswith(opener) and _balanced(text, len(opener)) == len(text) - 1:
            return text[len(opener) : -1].strip()
    return text


def last_boxed(text: str) -> str | None:
    """Content of the last complete top-level ``\\boxed{...}``/``\\fbox{...}``; empty boxes are skipped."""
    found: str | None = None
    pos = 0
    while True:
        starts = [(text.find(opener, pos), opener) for opener in _BOX_OPENERS]
        starts = [(i, opener) for i, opener in starts if i >= 0]
        if not starts:
            return found
        index, opener = min(starts)
        body_start = index + len(opener)
        end = _balanced(text, body_start)
        if end is None:  # an unclosed box (truncated output) is not an answer
            return found
        content = text[body_start:end].strip()
        if content:
            found = content
        pos = end + 1


def _clean_tail(answer: str) -> str:
    """Strip ``$``, surrounding spaces and a trailing sentence period from a free-text answer."""
    answer = answer.strip().replace("$", "").strip()
    while answer.endswith(".") and not _NUMBER.fullmatch(answer):
        answer = answer[:-1].rstrip()
    return answer


def extract_answer(text: str) -> str | None:
    """The answer in ``text``: last ``\\boxed{}``, else ``#### X``, else "The answer is X", else None."""
    boxed = last_boxed(text)
    if boxed is not None:
        while (inner := unwrap_box(boxed)) != boxed:  # \boxed{\boxed{5}} -> 5
            boxed = inner
        return boxed
    marks = _GSM8K.findall(text)
    if marks:
        answer = _clean_tail(marks[-1].replace(",", ""))
        if answer:
            return answer
    stated = _ANSWER_IS.findall(text)
    if stated:
        answer = _clean_tail(_SENTENCE_END.split(stated[-1], maxsplit=1)[0])
        if answer:
            return answer
    return None


# ------------------------------------------------------------------------------------------- gold answers


def _float_answer(raw: Any) -> str:
    """``27.0`` -> ``27``; ``0.5`` stays ``0.5``; non-numbers, NaN and infinities are rejected."""
    if isinstance(raw, bool):
        raise ValueError(f"expected a number, got {raw!r}")
    if isinstance(raw, int):
        return str(raw)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {raw!r}")
    if value.is_integer():
        return str(int(value))
    return format(Decimal(repr(value)).normalize(), "f")


def _gsm8k_answer(raw: Any) -> str:
    """The number after the last ``####`` of a GSM8K worked answer, commas removed."""
    if not isinstance(raw, str) or "####" not in raw:
        raise ValueError("expected a GSM8K answer ending in '#### <number>'")
    answer = raw.rsplit("####", 1)[1].strip().replace(",", "")
    if not _NUMBER.fullmatch(answer):
        raise ValueError(f"expected a number after '####', got {answer!r}")
    return answer


def _latex_answer(raw: Any) -> str:
    """A LaTeX/plain answer without surrounding ``$``, whitespace, or a wrapping ``\\boxed{}``."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return _float_answer(raw)
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {type(raw).__name__}")
    answer = raw.strip()
    while len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer[1:-1].strip()
    return unwrap_box(answer)


def normalize_gold(raw: Any, fmt: GoldFormat = "auto") -> str:
    """One answer string from a gold answer in ``fmt``; raises ValueError saying what is wrong.

    ``auto`` treats numbers as ``float``, strings containing ``####`` as ``gsm8k``, others as ``latex``.
    """
    if raw is None:
        raise ValueError("answer is missing (null)")
    if fmt == "auto":
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            fmt = "float"
        elif isinstance(raw, str) and "####" in raw:
            fmt = "gsm8k"
        else:
            fmt = "latex"
    if fmt == "gsm8k":
        answer = _gsm8k_answer(raw)
    elif fmt == "float":
        answer = _float_answer(raw)
    elif fmt in ("latex", "plain"):
        answer = _latex_answer(raw)
    else:
        raise ValueError(f"unknown answer format {fmt!r}")
    if not answer:
        raise ValueError("answer is empty")
    return answer


# ------------------------------------------------------------------------------------------- equivalence


_CANON_DROP = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\ |\s|\$")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def _canonical(answer: str) -> str:
    """A cheap textual normal form for the fast path (no maths, only spelling)."""
    text = _TEXT.sub(r"\1", answer).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return _CANON_DROP.sub("", unwrap_box(text)).rstrip(".")


def _for_parsing(answer: str) -> str:
    """Wrap a bare answer in ``\\boxed{}`` so math-verify reads it as LaTeX (``p - q``, ``\\text{(C)}``)."""
    text = answer.strip()
    while len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text[1:-1].strip()
    return "\\boxed{" + unwrap_box(text) + "}"


def _timeout() -> int | None:
    """math-verify's timeout: signals only work in the main thread, so None (disabled) elsewhere."""
    return TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def is_equivalent(gold: str, predicted: str | None) -> bool:
    """Whether ``predicted`` is mathematically the same answer as ``gold`` (math-verify, gold first)."""
    if predicted is None or not predicted.strip() or not gold.strip():
        return False
    if _canonical(gold) == _canonical(predicted):
        return True
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    limit = _timeout()
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    gold_parsed = parse(_for_parsing(gold), extraction_config=configs, parsing_timeout=limit)
    pred_parsed = parse(_for_parsing(predicted), extraction_config=configs, parsing_timeout=limit)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=limit))


@functools.lru_cache(maxsize=1 << 16)
def same_answer(first: str, other: str) -> bool:
    """Whether two predicted answers are the same answer (math-verify, ``first`` in the gold role).

    For grouping answers (Best-of-N votes): ``1/2``, ``0.5`` and ``\\frac{1}{2}`` are one answer. Cached,
    since each vote compares the same few answers again for every N.
    """
    return is_equivalent(first, other)
