"""``--where``: a filter over an index's stored columns, parsed into a pyarrow compute
expression — never ``eval`` of user text.

The grammar is a small SQL-like one::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := COLUMN OP LITERAL            OP: == = != <> < <= > >= like
                | COLUMN ["not"] "in" "(" LITERAL ("," LITERAL)* ")"
                | COLUMN "is" ["not"] "null"
    LITERAL    := 'text' | "text" | number | true | false
    COLUMN     := name (letters, digits, _ . -) | `any name`

e.g. ``taken >= '2020-01-01' and camera_model == 'X100V'`` or ``folder like 'trips/%'``.
A literal is cast to its column's type (an ISO date string to a timestamp column, a number
to a float column); a column the index does not have, an operator outside the grammar or a
literal that does not fit its column is one :class:`FilterError` naming it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compsearch.search.errors import QueryError

GRAMMAR_HINT = ("write comparisons like taken >= '2020-01-01' and camera_model == 'X100V' "
                "(operators == != < <= > >= like in, is null; combine with and, or, not, parentheses)")
KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false", "like"}
COMPARISONS = {"==": pc.equal, "=": pc.equal, "!=": pc.not_equal, "<>": pc.not_equal, "<": pc.less,
               "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal}
_TOKEN = re.compile(r"""
    \s*(?:
      (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<number>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![\w.]))
    | (?P<quoted>`[^`]+`)
    | (?P<operator>==|!=|<>|<=|>=|=|<|>|\(|\)|,)
    | (?P<word>[A-Za-z_][\w.\-]*)
    )""", re.X)


class FilterError(QueryError):
    """A ``--where`` expression that cannot be parsed or does not fit the index's columns."""


@dataclass(frozen=True)
class _Token:
    kind: str  # string, number, quoted, operator, word, end
    text: str
    position: int


def _tokens(text: str) -> list[_Token]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise FilterError(f"cannot read the filter at {text[position:].strip()[:20]!r} (position {position})",
                              GRAMMAR_HINT)
        kind = match.lastgroup
        tokens.append(_Token(kind, match.group(kind), match.start(kind)))
        position = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _unquote(token: _Token) -> str:
    return re.sub(r"\\(.)", r"\1", token.text[1:-1])


class _Parser:
    """A recursive-descent parser over the schema's columns (see the module docstring)."""

    def __init__(self, text: str, schema: pa.Schema) -> None:
        self.text = text
        self.schema = schema
        self.tokens = _tokens(text)
        self.at = 0

    def parse(self) -> pc.Expression:
        if self.tokens[0].kind == "end":
            raise FilterError("the filter is empty", GRAMMAR_HINT)
        expression = self._or()
        if self._peek().kind != "end":
            self._fail("unexpected")
        return expression

    # -- tokens ------------------------------------------------------------------------------
    def _peek(self) -> _Token:
        return self.tokens[self.at]

    def _next(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def _is_word(self, word: str) -> bool:
        token = self._peek()
        return token.kind == "word" and token.text.lower() == word

    def _expect(self, text: str) -> None:
        token = self._next()
        if token.text.lower() != text:
            self.at -= 1
            self._fail(f"expected {text!r} but found")

    def _fail(self, what: str) -> None:
        token = self._peek()
        found = repr(token.text) if token.kind != "end" else "the end of the filter"
        raise FilterError(f"{what} {found} at position {token.position} of the filter {self.text!r}", GRAMMAR_HINT)

    # -- grammar -----------------------------------------------------------------------------
    def _or(self) -> pc.Expression:
        expression = self._and()
        while self._is_word("or"):
            self._next()
            expression = expression | self._and()
        return expression

    def _and(self) -> pc.Expression:
        expression = self._not()
        while self._is_word("and"):
            self._next()
            expression = expression & self._not()
        return expression

    def _not(self) -> pc.Expression:
        if self._is_word("not"):
            self._next()
            return ~self._not()
        if self._peek().text == "(":
            self._next()
            expression = self._or()
            self._expect(")")
            return expression
        return self._comparison()

    def _comparison(self) -> pc.Expression:
        name, column_type = self._column()
        field = pc.field(name)
        token = self._next()
        word = token.text.lower() if token.kind == "word" else None
        if token.kind == "operator" and token.text in COMPARISONS:
            return COMPARISONS[token.text](field, self._literal(name, column_type))
        if word == "like":
            if not pa.types.is_string(column_type) and not pa.types.is_large_string(column_type):
                raise FilterError(f"'like' needs a text column; {name} is {column_type}", GRAMMAR_HINT)
            pattern = self._literal(name, column_type)
            return pc.match_like(field, pattern.as_py())
        if word == "is":
            negate = self._is_word("not")
            if negate:
                self._next()
            self._expect("null")
            return ~field.is_null() if negate else field.is_null()
        if word in ("in", "not"):
            if word == "not":
                self._expect("in")
            values = self._literal_list(name, column_type)
            member = field.isin(pa.array([value.as_py() for value in values], column_type))
            return ~member & field.is_valid() if word == "not" else member  # SQL: null is in no list
        self.at -= 1
        self._fail(f"expected an operator after {name} (== != < <= > >= like in is), found")
        raise AssertionError  # unreachable: _fail raises

    def _column(self) -> tuple[str, pa.DataType]:
        token = self._next()
        if token.kind == "quoted":
            name = token.text[1:-1]
        elif token.kind == "word" and token.text.lower() not in KEYWORDS:
            name = token.text
        else:
            self.at -= 1
            self._fail("expected a column name, found")
        index = self.schema.get_field_index(name)
        if index < 0:
            raise FilterError(f"no column {name!r} in this index",
                              f"filter on one of: {', '.join(sorted(self.schema.names))}")
        return name, self.schema.field(index).type

    def _literal_list(self, name: str, column_type: pa.DataType) -> list[pa.Scalar]:
        self._expect("(")
        values = [self._literal(name, column_type)]
        while self._peek().text == ",":
            self._next()
            values.append(self._literal(name, column_type))
        self._expect(")")
        return values

    def _literal(self, name: str, column_type: pa.DataType) -> pa.Scalar:
        token = self._next()
        value: Any
        if token.kind == "string":
            value = _unquote(token)
        elif token.kind == "number":
            value = float(token.text) if re.search(r"[.eE]", token.text) else int(token.text)
        elif token.kind == "word" and token.text.lower() in ("true", "false"):
            value = token.text.lower() == "true"
        else:
            self.at -= 1
            self._fail(f"expected a value to compare {name} with ('text', a number, true or false), found")
        return _cast(value, name, column_type)


def _cast(value: Any, name: str, column_type: pa.DataType) -> pa.Scalar:
    """``value`` as a scalar of the column's type; a string never silently becomes a number."""
    textual = pa.types.is_string(column_type) or pa.types.is_large_string(column_type)
    if isinstance(value, str) != textual and not (isinstance(value, str) and _is_temporal(column_type)):
        kind = "text" if textual else f"{column_type} values"
        raise FilterError(f"{name} holds {kind}; {value!r} does not compare with it",
                          "quote text values ('X100V'), leave numbers bare (iso >= 800)")
    try:
        return pa.scalar(value).cast(column_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError) as error:
        raise FilterError(f"{value!r} is not a {column_type} value for {name} ({error})",
                          "dates and times are written '2020-01-31' or '2020-01-31T12:00:00'") from None


def _is_temporal(column_type: pa.DataType) -> bool:
    return pa.types.is_timestamp(column_type) or pa.types.is_date(column_type)


def parse_filter(text: str, schema: pa.Schema) -> pc.Expression:
    """The pyarrow expression ``text`` means over ``schema``'s columns (module docstring)."""
    if not isinstance(text, str):
        raise FilterError(f"a filter must be text, not {type(text).__name__}", GRAMMAR_HINT)
    return _Parser(text, schema).parse()


def selected_positions(table: pa.Table, text: str) -> np.ndarray:
    """The positions (ascending) of ``table``'s rows that ``text`` keeps."""
    expression = parse_filter(text, table.schema)
    position = "__position"
    while position in table.schema.names:  # a carried column may have any name
        position += "_"
    numbered = table.append_column(position, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    try:
        kept = numbered.filter(expression)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
        raise FilterError(f"cannot apply the filter {text!r} ({error})", GRAMMAR_HINT) from None
    return kept.column(position).to_numpy()


def selected_ids(table: pa.Table, text: str) -> np.ndarray:
    """The sorted ids of ``table``'s rows that ``text`` keeps (``table`` has an ``id`` column)."""
    ids = table.column("id").to_numpy().astype(np.int64)
    return np.sort(ids[selected_positions(table, text)])
