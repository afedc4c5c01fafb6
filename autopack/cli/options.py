"""Typer options built from the parameter models (``autopack.params``): default, help and check, once.

``model_option(DrainParams, "batch_size", "--batch-size")`` is an option whose default is the field's, whose help
is the field's description, and whose value is checked by the field itself (its bounds and validators), so a bad
value is refused as a usage error (one line, exit 2) with the model's own message, before anything runs.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
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


#: Flags that are not ``--`` + the field's name with dashes: a repeatable option takes one value at a time.
FLAGS = {"run_ids": "--run-id", "skip_run_prefixes": "--skip-run-prefix"}
#: List fields given as one comma-separated value.
CSV_FIELDS = frozenset({"states"})


def flag(name: str) -> str:
    """The option of field ``name``."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def _plain(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _cli_type(annotation: Any, *, csv: bool) -> Any:
    """The Python type typer parses field's value as: the model checks it afterwards (``_checker``)."""
    if csv:
        return str
    annotation = _plain(annotation)
    optional = False
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        members = [_plain(a) for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = len(members) < len(typing.get_args(annotation)), members[0]
    origin = typing.get_origin(annotation)
    if origin is list:
        return list[str] | None  # a repeatable option given no value is None
    plain = str if origin is typing.Literal else annotation
    return plain | None if optional else plain


def params_command(model: type[ParamsModel]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A command that takes one ``params: model`` and has one option per field of ``model`` (``model_option``).

    The options are generated here from the model, so no command lists the fields; the values typer parsed (each
    checked by its option already) become the model in this one place, and the command gets the model.
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(command, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(command).parameters.values() if p.name != "params"]
        generated = [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              default=model_option(model, name, flag(name), csv=name in CSV_FIELDS),
                              annotation=_cli_type(field.annotation, csv=name in CSV_FIELDS))
            for name, field in model.model_fields.items()
        ]

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            fields = {name: values.pop(name) for name in model.model_fields}
            return command(params=model(**fields), **values)

        parameters = [*generated, *own]
        wrapper.__dict__["__signature__"] = inspect.Signature(parameters)  # what typer reads
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate
