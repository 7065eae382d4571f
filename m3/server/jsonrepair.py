"""Repair a model's almost-JSON answer: strip prose and code fences, take the outermost object or array, then fix
the usual slips (trailing commas, Python literals, single quotes, smart quotes). Raises JSONRepairError when none
of that yields JSON."""

import ast
import json
import re


class JSONRepairError(ValueError):
    pass


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def repair_json(text: str):
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        span = _outermost(candidate)
        if span is None:
            continue
        for attempt in _variants(span):
            try:
                return json.loads(attempt)
            except json.JSONDecodeError:
                pass
        try:
            value = ast.literal_eval(span)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict | list):
            return value
    raise JSONRepairError("no JSON object or array could be recovered from the model's output")


def _variants(span: str):
    yield span
    fixed = span.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    fixed = _TRAILING_COMMA.sub(r"\1", fixed)
    yield fixed
    yield re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", re.sub(r"\bNone\b", "null", fixed)))


def _outermost(text: str) -> str | None:
    """The first balanced {...} or [...] in text (brackets inside strings ignored); an unclosed one is closed."""
    start = next((i for i, ch in enumerate(text) if ch in "{["), None)
    if start is None:
        return None
    stack, quote, escaped = [], None, False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return text[start : i + 1]
    # NOTE: cut off mid-object (max_tokens): close what is open, dropping a dangling partial value
    tail = text[start:].rstrip().rstrip(",")
    if quote:
        tail += quote
    return tail + "".join(reversed(stack))
