"""Apply a calibration proposal to ``token_estimator.py`` with libcst, touching only the coefficient lines.

A regex or a re-render would reflow the file; libcst keeps every comment, blank line and the order of
entries, so the pull request's diff shows exactly the values that change (and one line per new entry).
Every change is checked against the file's current value first: a proposal computed against another
version of the estimator is refused (``StaleProposalError``) rather than silently overwriting it.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import libcst as cst

from autopack.calibration.result import Metadata, ProposedChange
from autopack.github.errors import EstimatorEditError, StaleProposalError
from autopack.github.proposal import Change, Number, calibration_stamp, parse_changes

ValueKind = Literal["int", "float"]

STAMP_NAMES = ("CALIBRATION_VERSION", "CALIBRATION_DATE", "CALIBRATION_SAMPLES")
_EMPTY_MODULE = cst.Module(body=[])


def apply_proposal(source: str, changes: Sequence[Mapping[str, Any] | Change | ProposedChange],
                   metadata: Metadata | Mapping[str, Any]) -> str:
    """Return ``source`` with each proposed ``TABLE[key] = new`` applied and the calibration stamp updated.

    ``changes`` are the calibration JSON's ``proposed_changes``; ``metadata`` its ``metadata`` (for
    ``generated_at`` and ``total_samples``). Existing keys get their value replaced in place; missing keys
    are appended at the end of their dict, one entry per line, formatted like the entries around them.
    Raises ``StaleProposalError`` when a change's ``old`` is not the file's current value (``old: null``
    means "the key is absent"), ``EstimatorEditError`` for an unknown table or a non-literal entry.
    """
    parsed = parse_changes(changes)
    stamp = calibration_stamp(metadata)
    module = _parse(source)
    assignments = _module_assignments(module)

    body = list(module.body)
    by_table: dict[str, list[Change]] = {}
    for change in parsed:
        by_table.setdefault(change.coefficient, []).append(change)
    for table, table_changes in by_table.items():
        missing = f"unknown coefficient table {table!r}: token_estimator.py has no module-level {table} = {{...}}"
        index = _index(assignments, table, missing)
        body[index] = _edit_table(body[index], table, table_changes, module.default_indent)  # type: ignore[arg-type]

    stamp_values: dict[str, str | int] = {
        "CALIBRATION_VERSION": stamp.version,
        "CALIBRATION_DATE": stamp.date,
        "CALIBRATION_SAMPLES": stamp.samples,
    }
    for name, value in stamp_values.items():
        index = _index(assignments, name, f"token_estimator.py has no module-level {name} assignment to update")
        body[index] = _set_scalar(body[index], name, value)  # type: ignore[arg-type]

    edited = module.with_changes(body=body).code
    try:
        compile(edited, "token_estimator.py", "exec")
    except SyntaxError as exc:  # a bug here must never reach a pull request
        raise EstimatorEditError(f"the edited estimator does not compile: {exc}") from exc
    return edited


def read_tables(source: str) -> dict[str, dict[tuple[str, str], Number]]:
    """Every module-level dict literal keyed by ``(str, str)`` with number values, as plain dicts."""
    module = _parse(source)
    tables: dict[str, dict[tuple[str, str], Number]] = {}
    for name, index in _module_assignments(module).items():
        if index < 0:
            continue
        value = _assigned(module.body[index]).value  # type: ignore[arg-type]
        if not isinstance(value, cst.Dict):
            continue
        try:
            entries = {key: _literal(el.value) for key, el in _entries(value, name)}
        except EstimatorEditError:
            continue
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in entries.values()):
            tables[name] = entries  # type: ignore[assignment]
    return tables


def read_stamp(source: str) -> dict[str, object]:
    """The current CALIBRATION_VERSION / CALIBRATION_DATE / CALIBRATION_SAMPLES values (missing → absent)."""
    module = _parse(source)
    found: dict[str, object] = {}
    for name, index in _module_assignments(module).items():
        if name in STAMP_NAMES and index >= 0:
            try:
                found[name] = _literal(_assigned(module.body[index]).value)  # type: ignore[arg-type]
            except EstimatorEditError:
                continue
    return found


# --- locating ------------------------------------------------------------------------------------


def _parse(source: str) -> cst.Module:
    try:
        return cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        raise EstimatorEditError(f"token_estimator.py does not parse: {exc.message} (line {exc.raw_line})") from exc


def _assigned(statement: cst.SimpleStatementLine) -> cst.Assign | cst.AnnAssign:
    return statement.body[0]  # type: ignore[return-value]


def _module_assignments(module: cst.Module) -> dict[str, int]:
    """name → index in ``module.body`` of its single top-level ``NAME = …`` / ``NAME: T = …`` statement."""
    found: dict[str, int] = {}
    repeated: set[str] = set()
    for index, statement in enumerate(module.body):
        if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
            continue
        node = statement.body[0]
        name: str | None = None
        if isinstance(node, cst.Assign) and len(node.targets) == 1 and isinstance(node.targets[0].target, cst.Name):
            name = node.targets[0].target.value
        elif isinstance(node, cst.AnnAssign) and node.value is not None and isinstance(node.target, cst.Name):
            name = node.target.value
        if name is None:
            continue
        if name in found:
            repeated.add(name)
        found[name] = index
    for name in repeated:
        found[name] = -1  # assigned more than once: editing one of them would be a guess
    return found


def _index(assignments: dict[str, int], name: str, missing: str) -> int:
    index = assignments.get(name)
    if index is None:
        raise EstimatorEditError(missing, hint="the calibration and the estimator disagree on table names")
    if index < 0:
        raise EstimatorEditError(f"{name} is assigned more than once in token_estimator.py; cannot tell which to edit")
    return index


def _literal(node: cst.BaseExpression) -> object:
    try:
        return ast.literal_eval(_EMPTY_MODULE.code_for_node(node))
    except (ValueError, SyntaxError, TypeError):
        raise EstimatorEditError(
            f"not a literal: {_EMPTY_MODULE.code_for_node(node)!r}; only plain literals can be edited"
        ) from None


def _entries(d: cst.Dict, table: str) -> list[tuple[tuple[str, str], cst.DictElement]]:
    entries: list[tuple[tuple[str, str], cst.DictElement]] = []
    for element in d.elements:
        if not isinstance(element, cst.DictElement):
            raise EstimatorEditError(f"{table} contains a ** expansion; only literal entries can be edited")
        key = _literal(element.key)
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
            raise EstimatorEditError(f"{table} has a key that is not a (str, str) tuple: {key!r}")
        entries.append(((key[0], key[1]), element))
    return entries


# --- editing a table -----------------------------------------------------------------------------


def _edit_table(
    statement: cst.SimpleStatementLine, table: str, changes: list[Change], default_indent: str
) -> cst.SimpleStatementLine:
    assign = _assigned(statement)
    d = assign.value
    if not isinstance(d, cst.Dict):
        raise EstimatorEditError(f"{table} is not a dict literal; cannot apply {changes[0].label}")
    entries = _entries(d, table)
    positions: dict[tuple[str, str], list[int]] = {}
    for position, (key, _) in enumerate(entries):
        positions.setdefault(key, []).append(position)
    kind = _value_kind(assign, d)

    elements = list(d.elements)
    appended: list[tuple[Change, cst.BaseExpression]] = []
    for change in changes:
        found = positions.get(change.key, [])
        if len(found) > 1:
            raise EstimatorEditError(f"{change.label} appears more than once in the file; cannot tell which to edit")
        node = _value_node(change, kind)
        if found:
            element = elements[found[0]]
            assert isinstance(element, cst.DictElement)
            current = _literal(element.value)
            if change.old is None:
                raise StaleProposalError(
                    f"stale proposal: {change.label} is {current} in the file, but the proposal expects no entry",
                    hint="re-run calibration against the current token_estimator.py",
                )
            if not _same(current, change.old):
                raise StaleProposalError(
                    f"stale proposal: {change.label} is {current} in the file, but the proposal expects {change.old}",
                    hint="re-run calibration against the current token_estimator.py",
                )
            elements[found[0]] = element.with_changes(value=node)
        else:
            if change.old is not None:
                raise StaleProposalError(
                    f"stale proposal: {change.label} is not in the file, but the proposal expects {change.old}",
                    hint="re-run calibration against the current token_estimator.py",
                )
            appended.append((change, node))

    new_dict = d.with_changes(elements=elements)
    if appended:
        new_dict = _append_entries(new_dict, appended, default_indent)
    return statement.with_changes(body=[assign.with_changes(value=new_dict)])


def _same(current: object, expected: Number) -> bool:
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        return False
    return math.isclose(current, expected, rel_tol=1e-9, abs_tol=1e-12)


def _value_kind(assign: cst.Assign | cst.AnnAssign, d: cst.Dict) -> ValueKind | None:
    """int/float from the annotation ``dict[..., int]``, else from the existing values, else unknown."""
    if isinstance(assign, cst.AnnAssign):
        annotation = assign.annotation.annotation
        if isinstance(annotation, cst.Subscript) and len(annotation.slice) == 2:
            value_type = annotation.slice[1].slice
            if isinstance(value_type, cst.Index) and isinstance(value_type.value, cst.Name):
                if value_type.value.value in ("int", "float"):
                    return value_type.value.value  # type: ignore[return-value]
    values = [el.value for el in d.elements if isinstance(el, cst.DictElement)]
    if values and all(isinstance(v, cst.Integer) for v in values):
        return "int"
    if any(isinstance(v, cst.Float) for v in values):
        return "float"
    return None


def _value_node(change: Change, kind: ValueKind | None) -> cst.BaseExpression:
    value = change.new
    if kind is None:
        kind = "int" if isinstance(value, int) else "float"
    if kind == "int":
        if not float(value).is_integer():
            raise EstimatorEditError(
                f"{change.label}: the table holds integers, but the proposal gives {value}",
                hint="the calibration must round values of integer tables",
            )
        node: cst.BaseExpression = cst.Integer(str(abs(int(value))))
    else:
        node = cst.Float(repr(abs(float(value))))
    if value < 0:
        node = cst.UnaryOperation(operator=cst.Minus(), expression=node)
    return node


def _quote(text: str, template: cst.SimpleString | None) -> cst.SimpleString:
    quote = template.value[-1] if template is not None else '"'
    if quote in text or "\\" in text or "\n" in text or not text.isprintable():
        return cst.SimpleString(repr(text))
    return cst.SimpleString(f"{quote}{text}{quote}")


def _new_element(template: cst.DictElement | None, change: Change, value: cst.BaseExpression) -> cst.DictElement:
    """A ``(a, b): value`` entry that copies the spacing and quotes of an existing entry when there is one."""
    if template is not None and isinstance(template.key, cst.Tuple) and len(template.key.elements) == 2:
        parts = [
            element.with_changes(
                value=_quote(part, element.value if isinstance(element.value, cst.SimpleString) else None)
            )
            for element, part in zip(template.key.elements, change.key, strict=True)
        ]
        return template.with_changes(key=template.key.with_changes(elements=parts), value=value)
    key = cst.Tuple(
        elements=[
            cst.Element(_quote(change.key[0], None), comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))),
            cst.Element(_quote(change.key[1], None)),
        ]
    )
    return cst.DictElement(key=key, value=value, whitespace_after_colon=cst.SimpleWhitespace(" "))


def _line_break(indent: bool, last_line: cst.SimpleWhitespace, first_line: cst.TrailingWhitespace | None = None,
                empty_lines: Sequence[cst.EmptyLine] = ()) -> cst.ParenthesizedWhitespace:
    return cst.ParenthesizedWhitespace(
        first_line=first_line or cst.TrailingWhitespace(),
        empty_lines=list(empty_lines),
        indent=indent,
        last_line=last_line,
    )


def _append_entries(d: cst.Dict, appended: list[tuple[Change, cst.BaseExpression]], default_indent: str) -> cst.Dict:
    elements = list(d.elements)
    template = next((el for el in elements if isinstance(el, cst.DictElement)), None)
    new = [_new_element(template, change, value) for change, value in appended]
    lbrace_ws = d.lbrace.whitespace_after
    rbrace_ws = d.rbrace.whitespace_before
    multiline = isinstance(lbrace_ws, cst.ParenthesizedWhitespace) or isinstance(rbrace_ws, cst.ParenthesizedWhitespace)

    if not elements:
        # An empty dict (``{}`` or ``{\n}``) becomes one entry per line, comments inside kept above them.
        comments: list[cst.EmptyLine] = []
        first_line: cst.TrailingWhitespace | None = None
        for ws in (lbrace_ws, rbrace_ws):
            if isinstance(ws, cst.ParenthesizedWhitespace):
                first_line = first_line or ws.first_line
                comments.extend(ws.empty_lines)
        entry_break = _line_break(True, cst.SimpleWhitespace(default_indent))
        new = [el.with_changes(comma=cst.Comma(whitespace_after=entry_break)) for el in new]
        new[-1] = new[-1].with_changes(comma=cst.Comma())
        return d.with_changes(
            lbrace=d.lbrace.with_changes(
                whitespace_after=_line_break(True, cst.SimpleWhitespace(default_indent), first_line, comments)
            ),
            elements=new,
            rbrace=d.rbrace.with_changes(whitespace_before=_line_break(True, cst.SimpleWhitespace(""))),
        )

    last = elements[-1]
    had_comma = isinstance(last.comma, cst.Comma)
    if not multiline:
        first_comma = elements[0].comma
        separator = (
            first_comma.whitespace_after
            if isinstance(first_comma, cst.Comma) and isinstance(first_comma.whitespace_after, cst.SimpleWhitespace)
            and len(elements) > 1
            else cst.SimpleWhitespace(" ")
        )
        original_last_comma = last.comma
        last_comma = last.comma if isinstance(last.comma, cst.Comma) else cst.Comma()
        elements[-1] = last.with_changes(comma=last_comma.with_changes(whitespace_after=separator))
        new = [el.with_changes(comma=cst.Comma(whitespace_after=separator)) for el in new]
        new[-1] = new[-1].with_changes(comma=original_last_comma)
        return d.with_changes(elements=[*elements, *new])

    # Multi-line: the indentation of entries is the one after "{" (or between the first two entries).
    if isinstance(lbrace_ws, cst.ParenthesizedWhitespace):
        entry_indent, entry_last = lbrace_ws.indent, lbrace_ws.last_line
    elif isinstance(elements[0].comma, cst.Comma) and isinstance(
        elements[0].comma.whitespace_after, cst.ParenthesizedWhitespace
    ):
        between = elements[0].comma.whitespace_after
        entry_indent, entry_last = between.indent, between.last_line
    else:
        entry_indent, entry_last = True, cst.SimpleWhitespace(default_indent)
    entry_break = _line_break(entry_indent, entry_last)

    # The last entry's own trailing comment stays on its line; comments before "}" stay before "}".
    if isinstance(rbrace_ws, cst.ParenthesizedWhitespace):
        last_line_tail = rbrace_ws.first_line
        closing: cst.BaseParenthesizableWhitespace = rbrace_ws.with_changes(first_line=cst.TrailingWhitespace())
    else:
        last_line_tail = cst.TrailingWhitespace()
        closing = rbrace_ws
    last_comma = last.comma if isinstance(last.comma, cst.Comma) else cst.Comma()
    elements[-1] = last.with_changes(
        comma=last_comma.with_changes(whitespace_after=_line_break(entry_indent, entry_last, last_line_tail))
    )
    new = [el.with_changes(comma=cst.Comma(whitespace_after=entry_break)) for el in new]
    new[-1] = new[-1].with_changes(comma=cst.Comma() if had_comma else cst.MaybeSentinel.DEFAULT)
    return d.with_changes(elements=[*elements, *new], rbrace=d.rbrace.with_changes(whitespace_before=closing))


# --- the calibration stamp -----------------------------------------------------------------------


def _set_scalar(statement: cst.SimpleStatementLine, name: str, value: str | int) -> cst.SimpleStatementLine:
    assign = _assigned(statement)
    current = assign.value
    if isinstance(value, str):
        if not isinstance(current, cst.SimpleString):
            raise EstimatorEditError(f"{name} is not a plain string literal; cannot update it")
        node: cst.BaseExpression = _quote(value, current).with_changes(lpar=current.lpar, rpar=current.rpar)
    else:
        if not isinstance(current, cst.Integer):
            raise EstimatorEditError(f"{name} is not a plain integer literal; cannot update it")
        node = current.with_changes(value=str(value))
    return statement.with_changes(body=[assign.with_changes(value=node)])
