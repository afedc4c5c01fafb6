"""Validated phase and run specs (the JSON a user, the API or a seed script hands in).

Validation happens before anything is written, so a malformed spec never leaves a half-created run.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autopack.db.models import Run
from autopack.errors import InputError, RefusedError
from autopack.execution.workspace import deliverable_workspace_path, workspace_relative
from autopack.taxonomy import category_spellings, complexity_spellings, normalise_category, normalise_complexity
from autopack.telemetry.bounds import bounds_for

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,200}$"
MAX_PATH_CHARS = 500
#: ``runs.source`` of a run created through the HTTP API (its check commands are not trusted by default).
API_SOURCE = "api"
ALLOW_SETTING = "AUTOPACK_API_ALLOW_CHECK_COMMANDS"


def check_command_argv(command: str) -> list[str]:
    """The argument vector a check command runs as: POSIX shell *quoting*, but no shell.

    ``pytest -q "tests/test x.py"`` is ``["pytest", "-q", "tests/test x.py"]``; pipes, redirections, ``&&``,
    ``$VARS`` and globs are not interpreted (they reach the program as literal arguments).
    """
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise InputError(f"check_command cannot be split into arguments: {exc}") from exc
    if not argv:
        raise InputError("check_command is empty")
    return argv


def refuse_untrusted_check_command(source: str | None, check_command: str | None, *, allowed: bool) -> None:
    """A run created through the API may carry a check command only where the API setting allows it.

    Checked by the API when the run is posted and by every drain worker before it runs the command: a
    check command is arbitrary code on the worker, and any API key holder could otherwise post one.
    """
    if check_command and source == API_SOURCE and not allowed:
        raise RefusedError(
            "check_command is disabled for runs created through the API",
            hint=f"leave check_command out, or set {ALLOW_SETTING}=1 on the API server and on every drain worker",
        )


def _each_path(paths: list[str], rule: Callable[[str], str]) -> list[str]:
    for path in paths:
        if len(path) > MAX_PATH_CHARS:
            raise ValueError(f"path longer than {MAX_PATH_CHARS} characters")
        try:
            rule(path)
        except InputError as exc:
            raise ValueError(exc.message) from exc
    return paths
#: A path inside the run workspace, as the OpenAPI schema states it (the validators below enforce it, and more:
#: relative, no ``..`` segment, no ``~`` or drive prefix).
WorkspacePath = Annotated[str, Field(json_schema_extra={
    "minLength": 1, "maxLength": MAX_PATH_CHARS, "pattern": r"^[^\x00]*[^\x00\s][^\x00]*$",
    "description": "relative to the run workspace; no '..' segment, no leading '/', '~' or drive",
})]
#: Integer fields are ``strict``: ``true`` is not 1, nor ``"5"`` or ``5.0`` a count (pydantic's lax mode took them).
#: The largest token cap ``runs.token_cap`` holds (PostgreSQL would overflow past it; SQLite would not).
_TOKEN_CAP_MAX = bounds_for(Run)["token_cap"].high


class PhaseSpec(BaseModel):
    """One phase: what to produce (deliverables), from what (read-only context), and how hard it is."""

    model_config = ConfigDict(extra="forbid")

    phase_id: str = Field(pattern=_ID_PATTERN)
    name: str | None = Field(default=None, max_length=255)
    description: str = Field(min_length=1, max_length=20_000, description="The goal given to the builder.")
    category: str = Field(min_length=1, max_length=64, description="a category of autopack.taxonomy or an alias "
                          "(case, spaces and hyphens are normalised)",
                          json_schema_extra={"enum": list(category_spellings())})
    complexity: str = Field(min_length=1, max_length=32, description="low, medium, high or maintenance, or an alias",
                            json_schema_extra={"enum": list(complexity_spellings())})
    deliverables: list[WorkspacePath] = Field(min_length=1, max_length=200)
    read_only_context: list[WorkspacePath] = Field(default_factory=list, max_length=200)
    scope_paths: list[WorkspacePath] = Field(default_factory=list, max_length=200)
    builder_mode: str | None = Field(default=None, max_length=32)
    check_command: str | None = Field(default=None, max_length=2000)
    max_builder_attempts: int = Field(default=3, ge=1, le=20, strict=True)

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        normalised = normalise_category(value)
        if not normalised.known:
            raise ValueError(f"unknown category '{value}'")
        return value

    @field_validator("complexity")
    @classmethod
    def _known_complexity(cls, value: str) -> str:
        normalised = normalise_complexity(value)
        if not normalised.known:
            raise ValueError(f"unknown complexity '{value}'")
        return value

    @field_validator("deliverables")
    @classmethod
    def _deliverables_inside_the_workspace(cls, deliverables: list[str]) -> list[str]:
        """The same function the drain applies before writing (so the drain never refuses what was accepted)."""
        return _each_path(deliverables, deliverable_workspace_path)

    @field_validator("read_only_context", "scope_paths")
    @classmethod
    def _paths_inside_the_workspace(cls, paths: list[str]) -> list[str]:
        return _each_path(paths, workspace_relative)

    @field_validator("check_command")
    @classmethod
    def _one_command(cls, command: str | None) -> str | None:
        if command is not None:
            try:
                check_command_argv(command)
            except InputError as exc:
                raise ValueError(exc.message) from exc
        return command

    def scope(self) -> dict[str, Any]:
        return {
            "paths": list(self.scope_paths),
            "read_only_context": list(self.read_only_context),
            "deliverables": list(self.deliverables),
        }


class RunSpec(BaseModel):
    """A run: an id and its ordered phases (phase ids unique within the run)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(pattern=_ID_PATTERN)
    goal: str | None = Field(default=None, max_length=20_000)
    token_cap: int | None = Field(default=None, ge=1, le=_TOKEN_CAP_MAX, strict=True)
    phases: list[PhaseSpec] = Field(min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _unique_phase_ids(self) -> RunSpec:
        seen: set[str] = set()
        for phase in self.phases:
            if phase.phase_id in seen:
                raise ValueError(f"duplicate phase_id '{phase.phase_id}'")
            seen.add(phase.phase_id)
        return self
