"""Library side of ``autopack pipeline run``: preparing the database and summarising the outcome."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pathlib import Path

from autopack.config import get_settings
from autopack.db.engine import session_scope
from autopack.db.identity import guard, read_identity
from autopack.db.migrate import upgrade_database
from autopack.errors import AutopackError, DbIdentityMismatchError, InputError
from autopack.github.proposal import ESTIMATOR_PATH
from autopack.execution.seed_runs import ensure_seed_runs


@dataclass
class Prepared:
    db_id: str
    messages: list[str] = field(default_factory=list)


def prepare_database(url: str, *, init: bool, expect_db_id: str | None = None) -> Prepared:
    """With ``init``: create/migrate the database and the seed runs that are missing, and say so.

    Without it nothing is created: the guard refuses an unmigrated, empty or unexpected database.
    """
    messages: list[str] = []
    expect_db_id = expect_db_id or get_settings().expected_db_id
    if init and expect_db_id:
        try:
            read_identity(url)
        except AutopackError as exc:  # nothing to compare with: creating it could never give that id
            raise DbIdentityMismatchError(
                f"DB_MISMATCH: a database with id {expect_db_id} is expected, but {exc.message}",
                hint="unset AUTOPACK_EXPECTED_DB_ID to create a new database, or point DATABASE_URL at it",
            ) from exc
    if init:
        report = upgrade_database(url)
        if report.changed:
            messages.append(f"init: database {report.url} migrated to {report.revision_after}")
        with session_scope(url) as session:
            created = ensure_seed_runs(session)
        if created:
            messages.append(f"init: created telemetry-collection runs {', '.join(created)}")
        else:
            messages.append("init: seed runs already present; nothing created")
    identity = guard(url, expect_db_id=expect_db_id)
    messages.append(f"database {identity.url} (id {identity.db_id})")
    return Prepared(identity.db_id, messages)


def check_target_repo(path: Path) -> Path:
    """The pull request edits ``autopack/token_estimator.py`` of a git checkout: fail before draining."""
    resolved = Path(path).resolve()
    if not (resolved / ESTIMATOR_PATH).is_file():
        raise InputError(f"{resolved} has no {ESTIMATOR_PATH}",
                         hint="--target-repo must be a git checkout of the autopack repository")
    if not (resolved / ".git").exists():
        raise InputError(f"{resolved} is not a git checkout", hint="clone the autopack repository and point --target-repo at it")
    return resolved


def summarise(result: Mapping[str, Any]) -> list[str]:
    """The closing lines: where the report, the plot and the (would-be) pull request are."""
    calibration = result.get("calibration") or {}
    gate = calibration.get("gate") or {}
    lines = [
        f"phases drained: {result.get('phases_drained', 0)}, telemetry events: {result.get('telemetry_events', 0)}",
        f"gate: {'passed' if gate.get('passed') else 'not passed'}"
        f" ({len(calibration.get('proposed_changes') or [])} coefficient change(s) proposed; reasons in the report)",
        f"report: {calibration.get('report_path')}",
        f"json:   {calibration.get('json_path')}",
        f"plot:   {calibration.get('plot_path')}",
    ]
    pr = result.get("pull_request")
    if pr:
        lines.append(f"pull request: {pr.get('summary') or pr.get('pr_url') or pr.get('status')}")
    else:
        lines.append("pull request: none (gate not passed)")
    return lines
