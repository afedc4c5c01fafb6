"""Validated phase and run specs (the JSON a user, the API or a seed script hands in).

Validation happens before anything is written, so a malformed spec never leaves a half-created run.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autopack.db.models import Run
from autopack.taxonomy import normalise_category, normalise_complexity
from autopack.telemetry.bounds import bounds_for

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,200}$"
#: The largest token cap ``runs.token_cap`` holds (PostgreSQL would overflow past it; SQLite would not).
_TOKEN_CAP_MAX = bounds_for(Run)["token_cap"].high


class PhaseSpec(BaseModel):
    """One phase: what to produce (deliverables), from what (read-only context), and how hard it is."""

    model_config = ConfigDict(extra="forbid")

    phase_id: str = Field(pattern=_ID_PATTERN)
    name: str | None = Field(default=None, max_length=255)
    description: str = Field(min_length=1, max_length=20_000, description="The goal given to the builder.")
    category: str = Field(min_length=1, max_length=64, description="e.g. implementation, tests, docs")
    complexity: str = Field(min_length=1, max_length=32, description="low, medium or high")
    deliverables: list[str] = Field(min_length=1, max_length=200)
    read_only_context: list[str] = Field(default_factory=list, max_length=200)
    scope_paths: list[str] = Field(default_factory=list, max_length=200)
    builder_mode: str | None = Field(default=None, max_length=32)
    check_command: str | None = Field(default=None, max_length=2000)
    max_builder_attempts: int = Field(default=3, ge=1, le=20)

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

    @field_validator("deliverables", "read_only_context", "scope_paths")
    @classmethod
    def _safe_paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not path or not path.strip():
                raise ValueError("empty path")
            if path.startswith("/") or ".." in path.replace("\\", "/").split("/"):
                raise ValueError(f"path must be relative and stay inside the workspace: '{path}'")
            if len(path) > 500:
                raise ValueError("path longer than 500 characters")
        return paths

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
    token_cap: int | None = Field(default=None, ge=1, le=_TOKEN_CAP_MAX)
    phases: list[PhaseSpec] = Field(min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _unique_phase_ids(self) -> RunSpec:
        seen: set[str] = set()
        for phase in self.phases:
            if phase.phase_id in seen:
                raise ValueError(f"duplicate phase_id '{phase.phase_id}'")
            seen.add(phase.phase_id)
        return self
