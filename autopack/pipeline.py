"""Library side of ``autopack pipeline run``: preparing the database and summarising the outcome."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopack.calibration.result import CalibrationOutcome
from autopack.config import Settings
from autopack.db.handle import Database, open_database
from autopack.db.identity import read_identity
from autopack.db.migrate import upgrade_database
from autopack.errors import AutopackError, ConfigError, DbIdentityMismatchError, InputError
from autopack.execution.seed_runs import ensure_seed_runs, seed_run_ids
from autopack.github.proposal import BOT_BRANCH, ESTIMATOR_PATH

#: A state message longer than this is cut: run lists show one line.
STATE_MESSAGE_LIMIT = 300


@dataclass
class Prepared:
    #: The database, verified by the one guard of this pipeline run.
    database: Database
    messages: list[str] = field(default_factory=list)

    @property
    def db_id(self) -> str:
        return str(self.database.db_id)


def prepare_database(target: Database, *, init: bool, expect_db_id: str | None = None, weeks: int = 1) -> Prepared:
    """With ``init``: create/migrate ``target`` and the seed runs (of ``weeks`` weeks) that are missing. Then
    open it (the guard): without ``init`` nothing is created, and an unmigrated, empty or unexpected database
    (``expect_db_id``, already resolved by the caller: ``autopack.db.handle.expected_db_id``) is refused.
    """
    messages: list[str] = []
    if init and expect_db_id:
        try:
            read_identity(target)
        except AutopackError as exc:  # nothing to compare with: creating it could never give that id
            raise DbIdentityMismatchError(
                f"DB_MISMATCH: a database with id {expect_db_id} is expected, but {exc.message}",
                hint="unset AUTOPACK_EXPECTED_DB_ID to create a new database, or point DATABASE_URL at it",
            ) from exc
    if init:
        wanted = seed_run_ids(weeks)  # a bad --weeks fails before anything is created
        report = upgrade_database(target)
        if report.changed:
            messages.append(f"init: database {report.url} migrated to {report.revision_after}")
        with target.session() as session:
            created = ensure_seed_runs(session, wanted)
        if created:
            messages.append(f"init: created telemetry-collection runs {', '.join(created)}")
        else:
            messages.append("init: seed runs already present; nothing created")
    database = open_database(target.url, expect_db_id=expect_db_id)
    messages.append(f"database {database.masked_url} (id {database.db_id})")
    return Prepared(database, messages)


def check_target_repo(path: Path) -> Path:
    """The pull request edits ``autopack/token_estimator.py`` of a git checkout: fail before draining."""
    resolved = Path(path).resolve()
    if not (resolved / ESTIMATOR_PATH).is_file():
        raise InputError(f"{resolved} has no {ESTIMATOR_PATH}",
                         hint="--target-repo must be a git checkout of the autopack repository")
    if not (resolved / ".git").exists():
        raise InputError(f"{resolved} is not a git checkout", hint="clone the autopack repository and point --target-repo at it")
    return resolved


def check_publish_settings(*, dry_run: bool, token: str | None, repository: str | None) -> None:
    """``dry_run`` false means a real pull request: without a token or a repository, refuse before draining.

    (The original, and this project until issue 10, quietly fell back to a local dry run instead.)
    """
    if dry_run:
        return
    if not token:
        raise ConfigError(
            "dry_run is false but no GitHub token is available",
            hint="create the Prefect Secret block github-token or set GITHUB_TOKEN; or ask for a dry run "
                 "(dry_run=true, --dry-run)",
        )
    if not repository:
        raise ConfigError(
            "dry_run is false but GITHUB_REPOSITORY is not set",
            hint="set GITHUB_REPOSITORY=owner/name (a job variable under a deployment); or ask for a dry run",
        )


def check_deployment_locations(*, output_dir: str, target_repo: str, dry_run: bool) -> None:
    """Under a deployment the flow runs in a temporary clone that is deleted after the run.

    Reports go to ``output_dir`` and a dry run writes its branch into ``target_repo``: both must be absolute
    paths on the worker host, or the results vanish with the clone. A real pull request only reads
    ``target_repo``'s estimator, so a relative one (the fresh clone itself) is fine then.
    """
    if not output_dir or not Path(output_dir).is_absolute():
        raise InputError(
            f"output_dir {output_dir!r} is not an absolute path; under a deployment the flow runs in a temporary "
            "clone that is deleted after the run",
            hint="pass an absolute output_dir on the worker host (prefect.yaml: export AUTOPACK_OUTPUT_DIR before "
                 "`prefect deploy --all`)",
        )
    if dry_run and (not target_repo or not Path(target_repo).is_absolute()):
        raise InputError(
            f"target_repo {target_repo!r} is not an absolute path; a dry run writes its branch there, and under a "
            "deployment a relative path is the temporary clone, deleted after the run",
            hint="pass the absolute path of an autopack git checkout on the worker host",
        )


def check_deployment_database(settings: Settings) -> None:
    """A deployment's flow run needs the telemetry database named: the default SQLite file would be created
    (or looked for) inside the temporary clone."""
    if settings.database_url_file is not None:
        return
    raw = (settings.database_url or "").strip()
    if not raw:
        raise ConfigError(
            "the worker has no DATABASE_URL, so the flow would look for a SQLite file inside its temporary clone",
            hint="export DATABASE_URL before `prefect deploy --all` (prefect.yaml hands it to the worker as a job "
                 "variable), or set DATABASE_URL_FILE in the worker's environment",
        )
    if raw.startswith("sqlite") and ":///" in raw:
        path = raw.split(":///", 1)[1].split("?", 1)[0]
        if path and path != ":memory:" and not path.startswith("file:") and not Path(path).is_absolute():
            raise ConfigError(
                f"DATABASE_URL points at a relative SQLite path ({path}); under a deployment that is inside the "
                "temporary clone",
                hint="use an absolute path: sqlite:////abs/path/autopack.db",
            )


def calibration_outcome(outcome: CalibrationOutcome) -> str:
    """``no calibration: …``, ``gate not passed: <reasons>`` or ``gate passed: n coefficient change(s) proposed``."""
    if outcome.result is None:
        return f"no calibration: {outcome.no_samples}"
    gate = outcome.result.gate
    if gate.passed:
        return f"gate passed: {len(outcome.result.proposed_changes)} coefficient change(s) proposed"
    return "gate not passed: " + "; ".join(gate.reasons or ["no reason given"])


def state_message(result: Mapping[str, Any]) -> str:
    """One line for the run's final state: what happened, so run lists tell a failed gate from a PR."""
    outcome: CalibrationOutcome = result.get("calibration") or CalibrationOutcome(no_samples="not run")
    pr = result.get("pull_request")
    if not outcome.gate_passed:
        text = calibration_outcome(outcome)
    elif not pr:
        text = "gate passed; no pull request"
    elif pr.get("status") in ("opened", "updated") and pr.get("pr_number") is not None:
        text = f"PR #{pr['pr_number']} {pr['status']}: {pr.get('pr_url')}"
    elif pr.get("status") == "dry_run":
        text = (f"dry run: branch {pr.get('branch') or BOT_BRANCH} written to {result.get('target_repo')}"
                f" ({str(pr.get('commit_sha') or '')[:12]}); PR body {pr.get('body_path')}")
    else:
        text = str(pr.get("summary") or pr.get("status"))
    return text if len(text) <= STATE_MESSAGE_LIMIT else text[: STATE_MESSAGE_LIMIT - 1] + "…"


def summarise(result: Mapping[str, Any]) -> list[str]:
    """The closing lines: the outcome, and where the report, the plot and the (would-be) pull request are."""
    outcome: CalibrationOutcome = result.get("calibration") or CalibrationOutcome(no_samples="not run")
    calibration = outcome.result
    lines = [
        f"outcome: {result.get('message') or state_message(result)}",
        f"phase attempts drained (retries included): {result.get('phases_drained', 0)}, telemetry events: {result.get('telemetry_events', 0)}",
    ]
    if calibration is not None:
        lines += [
            f"gate: {'passed' if calibration.gate.passed else 'not passed'} "
            f"({len(calibration.proposed_changes)} coefficient change(s) proposed; reasons in the report)",
            f"report: {calibration.report_path}",
            f"json:   {calibration.json_path}",
            f"plot:   {calibration.plot_path}",
        ]
    pr = result.get("pull_request")
    if pr:
        lines.append(f"pull request: {pr.get('summary') or pr.get('pr_url') or pr.get('status')}")
    else:
        lines.append("pull request: none" + ("" if calibration is None else " (gate not passed)"))
    if result.get("flow_run_url"):
        lines.append(f"flow run: {result['flow_run_url']}")
    timings = dict(result.get("timings") or {})
    if timings:
        stages = (f"{stage.replace('_', ' ')} {seconds:.1f} s" for stage, seconds in timings.items())
        lines.append("time: " + ", ".join(stages))
    return lines
