"""The ``filter`` expressions of Compute list calls, as predicates over resources (JSON dicts)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any


class FilterError(ValueError):
    """A filter the API would refuse (400)."""


_COMPARISON = re.compile(r"\s*(?P<field>[A-Za-z_][\w.\-]*)\s*(?P<op>!=|=|:|eq\b|ne\b)\s*")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'')
_BARE = re.compile(r"[^\s()]+")


def compile_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """The `filter` syntax of Compute list calls: `labels.k = "v"`, `!=`, `:` (has; `:*` = present),
    `eq`/`ne` (regex, full match), parentheses, NOT / `-`, AND (explicit or by juxtaposition) and OR
    (which binds tighter than AND, as in AIP-160)."""
    if not text or not text.strip():
        return lambda resource: True
    parser = _FilterParser(text)
    predicate = parser.conjunction()
    parser.skip_ws()
    if parser.pos != len(text):
        raise FilterError(f"unexpected {text[parser.pos:]!r}")
    return predicate


class _FilterParser:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def keyword(self, word: str) -> bool:
        match = re.compile(rf"\s*{word}(?=[\s(])").match(self.text, self.pos)
        if match:
            self.pos = match.end()
        return bool(match)

    def literal(self, char: str) -> bool:
        self.skip_ws()
        if self.text.startswith(char, self.pos):
            self.pos += len(char)
            return True
        return False

    def conjunction(self) -> Callable[[dict[str, Any]], bool]:
        terms = [self.disjunction()]
        while True:
            self.skip_ws()
            if self.pos >= len(self.text) or self.text[self.pos] == ")":
                break
            self.keyword("AND")
            terms.append(self.disjunction())
        return lambda resource: all(term(resource) for term in terms)

    def disjunction(self) -> Callable[[dict[str, Any]], bool]:
        factors = [self.factor()]
        while self.keyword("OR"):
            factors.append(self.factor())
        return factors[0] if len(factors) == 1 else (lambda resource: any(f(resource) for f in factors))

    def factor(self) -> Callable[[dict[str, Any]], bool]:
        if self.keyword("NOT") or self.literal("-"):
            inner = self.factor()
            return lambda resource: not inner(resource)
        if self.literal("("):
            inner = self.conjunction()
            if not self.literal(")"):
                raise FilterError("missing ')'")
            return inner
        return self.comparison()

    def comparison(self) -> Callable[[dict[str, Any]], bool]:
        match = _COMPARISON.match(self.text, self.pos)
        if not match:
            raise FilterError(f"expected a comparison at {self.text[self.pos:]!r}")
        self.pos = match.end()
        quoted = _QUOTED.match(self.text, self.pos)
        if quoted:
            raw = quoted.group(1) if quoted.group(1) is not None else quoted.group(2)
            value = re.sub(r"\\(.)", r"\1", raw)
            self.pos = quoted.end()
        else:
            bare = _BARE.match(self.text, self.pos)
            if not bare:
                raise FilterError(f"missing value after {match.group(0).strip()!r}")
            value, self.pos = bare.group(0), bare.end()
        path, op = match.group("field").split("."), match.group("op")
        if op in ("eq", "ne"):
            try:
                pattern = re.compile(value)
            except re.error as err:
                raise FilterError(f"bad regular expression {value!r}: {err}") from None
            return lambda resource: _regex_test(_lookup(resource, path), pattern, op == "ne")
        return lambda resource: _compare(_lookup(resource, path), op, value)


def _lookup(resource: Any, path: list[str]) -> list[Any]:
    values = [resource]
    for part in path:
        found: list[Any] = []
        for value in values:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict) and part in item:
                    found.append(item[part])
        values = found
    return [item for value in values for item in (value if isinstance(value, list) else [value])]


def _as_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _compare(values: list[Any], op: str, expected: str) -> bool:
    if op == ":":
        return bool(values) if expected == "*" else any(expected in _as_text(v) for v in values)
    matched = any(fnmatch.fnmatchcase(_as_text(v), expected) if "*" in expected else _as_text(v) == expected
                  for v in values)
    return matched if op == "=" else not matched


def _regex_test(values: list[Any], pattern: re.Pattern[str], negate: bool) -> bool:
    matched = any(pattern.fullmatch(_as_text(v)) for v in values)
    return not matched if negate else matched
