"""The range of every numeric column, derived from the ORM, so a number is checked before it is written.

Why: PostgreSQL's INTEGER overflows at 2³¹ (the write fails, the transaction rolls back and whatever it
was finishing, e.g. a lease, stays held), while SQLite silently stores the same number and the database
then holds a row PostgreSQL could not. Checking against the *column type*, never the backend, gives one
answer on both: a provider reporting 3×10⁹ completion tokens is refused on SQLite too.

Ranges (pure functions of the column type):
- ``SmallInteger`` 16-bit, ``Integer`` 32-bit, ``BigInteger`` 64-bit signed two's complement;
- ``Float``/``Numeric``: a finite number (no NaN, no ±Infinity);
- every numeric column of this schema is a count, an index, a ratio or a duration, so the lower bound is
  0 unless the column says otherwise with ``info={"signed": True}``.

``NULL`` (``None``) is not this module's business (nullability is the schema's); booleans are not numbers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa

from autopack.errors import InputError

INT16 = (-(2**15), 2**15 - 1)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Bounds:
    """What one numeric column accepts."""

    column: str  # "table.column", for messages
    integer: bool
    low: int | float | None  # None: no lower bound (a signed float column)
    high: int | None  # None: any finite float

    def problem(self, value: object) -> str | None:
        """Why ``value`` cannot be written to this column, or None if it can (None itself is allowed)."""
        if value is None:
            return None
        number = self._number(value)
        if isinstance(number, str):
            return f"{self.column}={_show(value)} {number}"
        if self.low is not None and number < self.low:
            return f"{self.column}={_show(value)} " + (f"is below {self.low}" if self.low else "is negative")
        if self.high is not None and number > self.high:
            return f"{self.column}={_show(value)} is outside {self.low}..{self.high}"
        return None

    def _number(self, value: object) -> int | float | str:
        """The value as this column's kind of number, or why it is not one (a phrase)."""
        kind = type(value)  # the usual cases first, without the numbers ABCs: an import checks 10⁶ rows' values
        if kind is int and self.integer:
            return value  # type: ignore[return-value]
        if kind is float and not self.integer:
            return value if math.isfinite(value) else "is not a finite number"  # type: ignore[arg-type, return-value]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return "is not a number"
        if self.integer:
            return int(value) if isinstance(value, numbers.Integral) else "is not an integer"
        try:
            number = float(value)
        except OverflowError:
            return "is not a finite number"
        return number if math.isfinite(number) else "is not a finite number"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def column_bounds(column: sa.Column[Any]) -> Bounds | None:
    """The range of one column, or None when it holds no number (text, JSON, booleans, dates)."""
    name = f"{column.table.name}.{column.name}" if column.table is not None else str(column.name)
    signed = bool(column.info.get("signed"))
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return None
    for type_, (low, high) in ((sa.BigInteger, INT64), (sa.SmallInteger, INT16), (sa.Integer, INT32)):
        if isinstance(kind, type_):
            return Bounds(name, True, low if signed else 0, high)
    if isinstance(kind, (sa.Float, sa.Numeric)):  # separate classes since SQLAlchemy 2.1
        return Bounds(name, False, None if signed else 0.0, None)
    return None


def _table(model_or_table: Any) -> sa.Table:
    table = getattr(model_or_table, "__table__", model_or_table)
    if not isinstance(table, sa.Table):
        raise TypeError(f"not a mapped class or table: {model_or_table!r}")
    return table


@cache
def bounds_for(model_or_table: Any) -> Mapping[str, Bounds]:
    """Every numeric column of a mapped class (or ``Table``), by column name and by ORM attribute name."""
    table = _table(model_or_table)
    found = {column.name: bounds for column in table.columns if (bounds := column_bounds(column)) is not None}
    if not isinstance(model_or_table, sa.Table):
        for attr in sa.inspect(model_or_table).column_attrs:
            if attr.columns[0].name in found:
                found.setdefault(attr.key, found[attr.columns[0].name])
    return MappingProxyType(found)


def out_of_range(model_or_table: Any, values: Mapping[str, object]) -> dict[str, str]:
    """``{key: why}`` for each value its column cannot hold (keys that are not numeric columns are ignored)."""
    problems: dict[str, str] = {}
    for key, bounds in bounds_for(model_or_table).items():  # the numeric columns only, not every key of the row
        value = values.get(key)
        if value is None:
            continue
        if type(value) is int and bounds.integer and bounds.low <= value <= bounds.high:  # type: ignore[operator]
            continue  # the usual whole number in range, decided inline: an import asks 17 columns × 10⁶ rows
        if (problem := bounds.problem(value)) is not None:
            problems[key] = problem
    return {key: problems[key] for key in values if key in problems} if problems else problems  # as given


class ValueOutOfRangeError(InputError):
    """A number does not fit the column it was meant for; nothing of that row was written."""

    exit_code = 1

    def __init__(self, problems: Mapping[str, str], *, context: str = "", hint: str | None = None) -> None:
        self.problems = dict(problems)
        prefix = f"{context}: " if context else ""
        super().__init__(prefix + "; ".join(self.problems.values()), hint=hint)


def check_row(model_or_table: Any, values: Mapping[str, object], *, context: str = "") -> None:
    """Raise ``ValueOutOfRangeError`` naming every value of the row its column cannot hold."""
    problems = out_of_range(model_or_table, values)
    if problems:
        raise ValueOutOfRangeError(problems, context=context)
