"""Repair a model's almost-JSON answer: strip prose and code fences, take the outermost object or array, then fix
the usual slips (trailing commas, Python literals, smart quotes); as a last resort a lenient parser reads what the
model meant (unclosed or mismatched brackets, a list the model forgot to close before the next key, bare keys,
a cut-off end). Raises JSONRepairError when none of that yields an object or array."""

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
    start = next((i for i, ch in enumerate(text) if ch in "{["), None)
    if start is not None:
        try:
            value = _Lenient(text, start).value()
        except (ValueError, IndexError, RecursionError):
            value = None
        if isinstance(value, dict | list) and value:
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


class _Lenient:
    """Recursive descent that never gives up on a bracket: a stray closer is skipped, EOF closes everything."""

    _LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}

    def __init__(self, text: str, pos: int):
        self.text, self.pos = text, pos
        self.pending_key: str | None = None  # a key met inside a list: the list ends, the parent object takes it

    def ws(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n,":
            self.pos += 1
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def value(self):
        ch = self.ws()
        if ch == "{":
            self.pos += 1
            return self.object()
        if ch == "[":
            self.pos += 1
            return self.array()
        if ch in "\"'":
            return self.string()
        m = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?|[A-Za-z_]\w*").match(self.text, self.pos)
        if not m:
            raise ValueError(f"unexpected {ch!r} at {self.pos}")
        self.pos = m.end()
        word = m.group(0)
        if word in self._LITERALS:
            return self._LITERALS[word]
        if word[0].isalpha() or word[0] == "_":
            return word
        return float(word) if any(c in word for c in ".eE") else int(word)

    def string(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out = []
        while self.pos < len(self.text) and self.text[self.pos] != quote:
            ch = self.text[self.pos]
            if ch == "\\" and self.pos + 1 < len(self.text):
                out.append(
                    json.loads(f'"\\{self.text[self.pos + 1]}"')
                    if self.text[self.pos + 1] in 'nrtbf"\\/'
                    else self.text[self.pos + 1]
                )
                self.pos += 2
                continue
            out.append(ch)
            self.pos += 1
        self.pos += 1
        return "".join(out)

    def object(self) -> dict:
        obj = {}
        while True:
            if self.pending_key is not None:
                key, self.pending_key = self.pending_key, None
            else:
                ch = self.ws()
                if ch in ("", "}"):
                    self.pos += 1
                    return obj
                if ch == "]":  # stray closer
                    self.pos += 1
                    continue
                key = self.string() if ch in "\"'" else str(self.value())
                if self.ws() != ":":
                    return obj
                self.pos += 1
            obj[key] = self.value()

    def array(self) -> list:
        items = []
        while True:
            ch = self.ws()
            if ch in ("", "]"):
                self.pos += 1
                return items
            if ch == "}":  # the list was never closed: its parent object ends here
                return items
            item = self.value()
            if isinstance(item, str) and self.ws() == ":":
                self.pos += 1
                self.pending_key = item
                return items
            items.append(item)
