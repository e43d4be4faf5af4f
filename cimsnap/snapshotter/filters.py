"""containerd filter expressions (`pkg/filters`), used by List/Walk to select snapshots.

Syntax (containerd's documented grammar)::

    selectors := selector ("," selector)*          all selectors must match (AND)
    selector  := fieldpath [operator value]         no operator: the field must be present
    fieldpath := field ("." field)*
    field     := quoted | [A-Za-z0-9_]+
    operator  := "==" | "!=" | "~="                 ~= is a regular expression search
    value     := quoted | [^\\s,]+
    quoted    := Go string syntax; "/" and "|" also quote a ~= value

Several filter strings are OR-ed (``ParseAll``); no filter, or an empty string, matches all.
For snapshots the fields are ``kind`` (active, view, committed), ``name``, ``parent`` and
``labels.<key>`` (``labels."key.with.dots"``), as containerd's snapshot storage adapts them.

Written from the grammar and behaviour described in containerd's pkg/filters (facts only).
Regular expressions use Python's ``re``, which agrees with Go's RE2 on ordinary patterns.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cimsnap.errors import UsageError

from .model import Info

# A field adaptor answers (value, present) for a field path of the object being matched.
Adaptor = Callable[[Sequence[str]], tuple[str, bool]]

_OP_PRESENT, _OP_EQUAL, _OP_NOT_EQUAL, _OP_MATCHES = "?", "==", "!=", "~="
_QUOTES = '/|"'  # runes that open a quoted token (single quotes are not quote runes)
_SEPARATORS = ",."
_OPERATOR_RUNES = "=!~"


class FilterSyntaxError(UsageError):
    """A filter expression does not parse (containerd: invalid argument)."""


@dataclass(frozen=True)
class _Token:
    kind: str  # "eof", "quoted", "value", "field", "sep", "op", "illegal", "other"
    text: str
    pos: int


def _is_field_rune(ch: str) -> bool:
    return ch == "_" or ("a" <= ch <= "z") or ("A" <= ch <= "Z") or ("0" <= ch <= "9")


def _is_value_rune(ch: str) -> bool:
    if ch == "," or ch.isspace():
        return False
    category = unicodedata.category(ch)
    return category[0] in "LMNPS"


class _Scanner:
    """Tokenizer with containerd's one flag of state: after an operator comes a value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.value_mode = False
        self.error = ""

    def peek(self) -> str:
        """The next non-consumed character ('' at the end), without skipping spaces."""
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def scan(self) -> _Token:
        text = self.text
        while self.pos < len(text) and text[self.pos].isspace():
            self.pos += 1
        start = self.pos
        if start >= len(text):
            return _Token("eof", "", start)
        ch = text[start]
        self.pos += 1
        if ch == "\x00":
            self.error = "unexpected null"
            return _Token("illegal", ch, start)
        if ch in _QUOTES:
            if not self._scan_quoted(ch):
                return _Token("illegal", text[start : self.pos], start)
            return _Token("quoted", text[start : self.pos], start)
        if ch in _SEPARATORS:
            self.value_mode = False
            return _Token("sep", ch, start)
        if ch in _OPERATOR_RUNES:
            while self.pos < len(text) and text[self.pos] in _OPERATOR_RUNES:
                self.pos += 1
            self.value_mode = True
            return _Token("op", text[start : self.pos], start)
        if self.value_mode:
            while self.pos < len(text) and _is_value_rune(text[self.pos]):
                self.pos += 1
            self.value_mode = False
            return _Token("value", text[start : self.pos], start)
        if _is_field_rune(ch):
            while self.pos < len(text) and _is_field_rune(text[self.pos]):
                self.pos += 1
            return _Token("field", text[start : self.pos], start)
        return _Token("other", ch, start)

    def _scan_quoted(self, quote: str) -> bool:
        text = self.text
        legal = True
        while True:
            if self.pos >= len(text) or text[self.pos] == "\n":
                self.error = self.error or "quoted literal not terminated"
                return False
            ch = text[self.pos]
            self.pos += 1
            if ch == quote:
                return legal
            if ch == "\\":
                legal = self._scan_escape(quote) and legal

    def _scan_escape(self, quote: str) -> bool:
        text = self.text
        if self.pos >= len(text):
            return True  # the unterminated literal is reported by the caller
        ch = text[self.pos]
        self.pos += 1
        if ch in "abfnrtv\\" or ch == quote:
            return True
        digits = {"x": (16, 2), "u": (16, 4), "U": (16, 8)}
        if ch in "01234567":
            base, count, self.pos = 8, 3, self.pos - 1
        elif ch in digits:
            base, count = digits[ch]
        else:
            self.error = self.error or "illegal escape sequence"
            return False
        for _ in range(count):
            if self.pos < len(text) and _digit_value(text[self.pos]) < base:
                self.pos += 1
            else:
                self.error = self.error or "illegal numeric escape sequence"
                return False
        return True


def _digit_value(ch: str) -> int:
    if "0" <= ch <= "9":
        return ord(ch) - ord("0")
    if "a" <= ch.lower() <= "f":
        return ord(ch.lower()) - ord("a") + 10
    return 16


def _unquote(token: str) -> str:
    """Go ``strconv.Unquote`` extended to ``/`` and ``|`` delimiters; ValueError if malformed."""
    if len(token) < 2 or token[0] != token[-1]:
        raise ValueError("quote syntax error")
    quote, body = token[0], token[1:-1]
    if "\n" in body:
        raise ValueError("quote syntax error")
    out = bytearray()
    i = 0
    simple = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}
    while i < len(body):
        ch = body[i]
        if ch == quote:
            raise ValueError("quote syntax error")
        if ch != "\\":
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError("quote syntax error")
        esc = body[i + 1]
        i += 2
        if esc in simple:
            out.append(simple[esc])
        elif esc in "'\"|/":
            if esc != quote:
                raise ValueError("quote syntax error")
            out += esc.encode()
        elif esc in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[esc]
            digits = body[i : i + width]
            if len(digits) < width or any(_digit_value(d) >= 16 for d in digits):
                raise ValueError("quote syntax error")
            value = int(digits, 16)
            i += width
            if esc == "x":
                out.append(value)  # a single byte, possibly not UTF-8 (as in Go)
            else:
                if value > 0x10FFFF:
                    raise ValueError("quote syntax error")
                out += chr(value).encode("utf-8", "surrogatepass")
        elif esc in "01234567":
            digits = body[i - 1 : i + 2]
            if len(digits) < 3 or any(d not in "01234567" for d in digits):
                raise ValueError("quote syntax error")
            value = int(digits, 8)
            if value > 255:
                raise ValueError("quote syntax error")
            out.append(value)
            i += 2
        else:
            raise ValueError("quote syntax error")
    return out.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Selector:
    """One ``<fieldpath>[<op><value>]`` term."""

    fieldpath: tuple[str, ...]
    operator: str = _OP_PRESENT
    value: str = ""
    pattern: re.Pattern[str] | None = None

    def match(self, adaptor: Adaptor) -> bool:
        value, present = adaptor(self.fieldpath)
        if self.operator == _OP_PRESENT:
            return present
        if self.operator == _OP_EQUAL:
            return present and value == self.value
        if self.operator == _OP_NOT_EQUAL:
            return value != self.value
        # ~= : an invalid pattern matches nothing (containerd logs and returns false)
        return self.pattern is not None and self.pattern.search(value) is not None


@dataclass(frozen=True)
class Filter:
    """OR of AND-groups of selectors; no groups means "match everything"."""

    groups: tuple[tuple[Selector, ...], ...] = ()

    def match(self, adaptor: Adaptor) -> bool:
        if not self.groups:
            return True
        return any(all(s.match(adaptor) for s in group) for group in self.groups)

    def match_info(self, info: Info) -> bool:
        return self.match(snapshot_adaptor(info))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.scanner = _Scanner(text)

    def _next(self) -> _Token:
        return self.scanner.scan()

    def error(self, pos: int, message: str) -> FilterSyntaxError:
        text = self.text
        if pos < len(text):
            where = f"[{text[:pos]} >|{text[pos]}|< {text[pos + 1 :]}]"
        else:
            where = f"[{text}]"
        return FilterSyntaxError(f"filters: parse error: {where}: {message}")

    # containerd's parser looks ahead one raw character (no space skipping) between tokens.
    def parse(self) -> tuple[Selector, ...]:
        selectors = [self.selector()]
        while True:
            ahead = self.scanner.peek()
            if ahead == "":
                return tuple(selectors)
            if ahead == ",":
                self._next()
                selectors.append(self.selector())
                continue
            raise self.error(self.scanner.pos, f"unexpected input: {ahead}")

    def selector(self) -> Selector:
        fieldpath = self.fieldpath()
        if self.scanner.peek() in ("", ","):
            return Selector(fieldpath)
        operator = self.operator()
        value = self.value(allow_alt_quotes=operator == _OP_MATCHES)
        pattern = None
        if operator == _OP_MATCHES:
            try:
                pattern = re.compile(value)
            except re.error:
                pattern = None
        return Selector(fieldpath, operator, value, pattern)

    def fieldpath(self) -> tuple[str, ...]:
        fields = [self.field()]
        while self.scanner.peek() == ".":
            self._next()
            fields.append(self.field())
        return tuple(fields)

    def field(self) -> str:
        token = self._next()
        if token.kind == "field":
            return token.text
        if token.kind == "quoted":
            return self.unquote(token, allow_alt_quotes=False)
        if token.kind == "illegal":
            raise self.error(token.pos, self.scanner.error)
        raise self.error(token.pos, "expected field or quoted")

    def operator(self) -> str:
        token = self._next()
        if token.kind == "op":
            if token.text in (_OP_EQUAL, _OP_NOT_EQUAL, _OP_MATCHES):
                return token.text
            raise self.error(token.pos, f"unsupported operator {token.text!r}")
        if token.kind == "illegal":
            raise self.error(token.pos, self.scanner.error)
        raise self.error(token.pos, 'expected an operator ("=="|"!="|"~=")')

    def value(self, *, allow_alt_quotes: bool) -> str:
        token = self._next()
        if token.kind in ("value", "field"):
            return token.text
        if token.kind == "quoted":
            return self.unquote(token, allow_alt_quotes=allow_alt_quotes)
        if token.kind == "illegal":
            raise self.error(token.pos, self.scanner.error)
        raise self.error(token.pos, "expected value or quoted")

    def unquote(self, token: _Token, *, allow_alt_quotes: bool) -> str:
        if not allow_alt_quotes and token.text[0] != '"':
            raise self.error(token.pos, "invalid quote encountered")
        try:
            return _unquote(token.text)
        except ValueError as err:
            raise self.error(token.pos, f"unquoting failed: {err}") from None


def parse(text: str) -> tuple[Selector, ...]:
    """Parse one filter string into its AND-ed selectors; () for the empty string."""
    if text == "":
        return ()
    return _Parser(text).parse()


def parse_all(texts: Sequence[str]) -> Filter:
    """containerd's ``filters.ParseAll``: any one of the filter strings must match."""
    groups = []
    for text in texts:
        selectors = parse(text)
        if not selectors:
            return Filter()  # an empty filter string matches everything
        groups.append(selectors)
    return Filter(tuple(groups))


def snapshot_adaptor(info: Info) -> Adaptor:
    """The fields a snapshot offers to filters (containerd's storage adaptSnapshot)."""

    def field(path: Sequence[str]) -> tuple[str, bool]:
        if not path:
            return "", False
        head = path[0]
        if head == "kind":
            if info.kind.filter_name in ("active", "view", "committed"):
                return info.kind.filter_name, True
            return "", False
        if head == "name":
            return info.name, True
        if head == "parent":
            return info.parent, True
        if head == "labels":
            if not info.labels:
                return "", False
            key = ".".join(path[1:])
            if key in info.labels:
                return info.labels[key], True
            return "", False
        return "", False

    return field
