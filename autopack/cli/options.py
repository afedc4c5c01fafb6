"""Typer options built from the parameter models (``autopack.params``): default, help and check, once.

``model_option(DrainParams, "batch_size", "--batch-size")`` is an option whose default is the field's, whose help
is the field's description, and whose value is checked by the field itself (its bounds and validators), so a bad
value is refused as a usage error (one line, exit 2) with the model's own message, before anything runs.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

import typer

from autopack.errors import InputError
from autopack.params import ParamsModel


def _checker(model: type[ParamsModel], name: str, *, csv: bool) -> Any:
    def check(ctx: typer.Context, param: Any, value: Any) -> Any:
        if ctx.resilient_parsing:  # shell completion: no checks
            return value
        if isinstance(value, PurePath):  # typer made it a Path: check the text, keep the Path
            model_value: Any = str(value)
        else:
            model_value = list(value) if isinstance(value, tuple) else value
        try:
            checked = getattr(model.model_validate({name: model_value}), name)
        except InputError as exc:
            raise typer.BadParameter(exc.message.removeprefix(f"{name}: ")) from None
        if isinstance(value, PurePath):
            return value
        return ",".join(checked) if csv else checked

    check.field = name  # type: ignore[attr-defined]  # read by scripts/params_table.py: which flag is which field
    return check


def model_option(model: type[ParamsModel], name: str, *param_decls: str, csv: bool = False, **extra: Any) -> Any:
    """A ``typer.Option`` for field ``name`` of ``model`` (``csv``: a list field given as one comma-separated value)."""
    field = model.model_fields[name]
    bounds = model.bounds(name)
    default = model.default(name)
    if csv:
        default = ",".join(default)
    elif isinstance(default, list):
        default = default or None  # a repeatable option given no value
    help_text = f"{field.description} ({bounds})" if bounds else field.description
    return typer.Option(default, *param_decls, help=help_text, callback=_checker(model, name, csv=csv),
                        show_default=default not in (None, ""), **extra)
