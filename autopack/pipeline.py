"""Library side of the pipeline (``autopack pipeline run``, the ``telemetry-pipeline`` flow): preparing the database,
the checks before draining, the validation step, publishing, and summarising the outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from autopack.calibration.result import CalibrationOutcome, CalibrationResult
from autopack.config import Settings, get_settings
from autopack.db.handle import Database, open_database
from autopack.db.identity import read_identity
from autopack.db.migrate import upgrade_database
from autopack.db.models import Phase, PhaseState
from autopack.errors import AutopackError, ConfigError, DbIdentityMismatchError, InputError
from autopack.execution.seed_runs import ensure_seed_runs, seed_run_ids
from autopack.github.proposal import BOT_BRANCH, ESTIMATOR_PATH
from autopack.github.result import PublishResult
from autopack.logging import get_logger
from autopack.params import PipelineParams
from autopack.run_order import run_order
from autopack.telemetry.recorder import unfinished_success_of

if TYPE_CHECKING:
    from autopack.execution.batch import DrainSummary

log = get_logger(__name__)

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
    check_estimator_matches(resolved)
    return resolved


def check_estimator_matches(target: Path) -> None:
    """The calibration starts from the coefficients of the estimator autopack runs with; the pull request edits
    the target's. When their tables differ, what it proposes is computed against the wrong file and the publish
    step refuses it as stale however often it is run again: refuse before draining, saying which two files."""
    from autopack import token_estimator as te
    from autopack.github.estimator_edit import read_tables

    running, edited = Path(te.__file__).resolve(), target / ESTIMATOR_PATH
    if running != edited.resolve() and read_tables(running.read_text()) != read_tables(edited.read_text()):
        raise InputError(
            f"the coefficients of {edited} differ from those of the estimator autopack runs with ({running}): a "
            "calibration would propose changes to the wrong file",
            hint="run autopack from the target checkout (pip install -e it), or bring the two files to the same "
                 "commit",
        )


#: The Prefect Secret block that holds the GitHub token of a deployment's runs.
SECRET_BLOCK = "github-token"


def github_token() -> str | None:
    """The token from the Prefect Secret block ``github-token``, else ``GITHUB_TOKEN``, else None.

    Blocks are looked up inside a flow run or against a configured server (``PREFECT_API_URL``), never by
    starting a temporary server just for that.
    """
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL

    if FlowRunContext.get() is not None or PREFECT_API_URL.value():
        try:
            from prefect.blocks.system import Secret

            # called synchronously, load returns the block itself (its coroutine only inside an event loop)
            value = cast("Secret[Any]", Secret.load(SECRET_BLOCK)).get()
            if value:
                return str(value)
        except Exception:  # no such block: fall back to the environment
            pass
    token = get_settings().github_token
    return token.get_secret_value() if token else None


class PublishSettings(BaseModel):
    """Where the pull request goes, as checked once per pipeline run (``check_publish_settings``).

    It holds no token and no URL (``GITHUB_API_URL`` may carry credentials): it is passed to the pull-request
    step as a Prefect parameter, which the server stores; those are read where they are used
    (``publish_pull_request``).
    """

    model_config = ConfigDict(frozen=True)

    dry_run: bool
    repository: str | None


def check_publish_settings(*, dry_run: bool) -> PublishSettings:
    """``dry_run`` false means a real pull request: without a token or a repository, refuse before draining.

    (The original, and this project until issue 10, quietly fell back to a local dry run instead.)
    """
    settings = get_settings()
    publish = PublishSettings(dry_run=dry_run, repository=settings.github_repository)
    log.debug("publish settings checked (dry_run=%s)", dry_run)
    if dry_run:
        return publish
    if not github_token():
        raise ConfigError(
            "dry_run is false but no GitHub token is available",
            hint="create the Prefect Secret block github-token or set GITHUB_TOKEN; or ask for a dry run "
                 "(dry_run=true, --dry-run)",
        )
    if not publish.repository:
        raise ConfigError(
            "dry_run is false but GITHUB_REPOSITORY is not set",
            hint="set GITHUB_REPOSITORY=owner/name (a job variable under a deployment); or ask for a dry run",
        )
    return publish


def check_repository_access(repository: str, target: Path) -> None:
    """Read the repository, its base branch and the base's estimator with the token, before a phase is drained:
    a malformed ``GITHUB_REPOSITORY``, a wrong token, an unknown repository, an unreachable GitHub, or a base
    that moved on from the ``target`` checkout (a human merged last week's pull request) would otherwise be
    found after the whole drain (a week of real LLM calls) and calibration. Raises the publish step's own
    one-line error."""
    from autopack.github.errors import StaleBaseError
    from autopack.github.remote import GitHubRepository

    estimator = target / ESTIMATOR_PATH
    with GitHubRepository(token=github_token(), repository=repository, base_url=get_settings().github_base_url) as gh:
        try:
            gh.check_base(estimator.read_text(encoding="utf-8"))
        except StaleBaseError as exc:
            raise StaleBaseError(
                f"{ESTIMATOR_PATH} on {repository}'s {gh.base} differs from {estimator}: the base moved on (a "
                "calibration pull request merged?), and a proposal computed from this checkout would be refused "
                "as stale after the drain",
                hint=f"update {target} and the autopack you run to {gh.base} (git pull), then run again",
            ) from exc


class Preflight(BaseModel):
    """What the pipeline checked before draining: the resolved target checkout and where the PR goes.

    ``autopack pipeline run`` checks before it creates anything and hands this to the flow (its ``checked``
    parameter), so the publish settings are checked once per pipeline run."""

    model_config = ConfigDict(frozen=True)

    target_repo: str
    publish: PublishSettings


def preflight(params: PipelineParams, *, in_deployment: bool) -> Preflight:
    """Everything that can be refused before a phase is drained, once per pipeline run."""
    if in_deployment:
        check_deployment_database(get_settings())
        check_deployment_locations(output_dir=params.output_dir, target_repo=params.target_repo,
                                   dry_run=params.dry_run)
    publish = check_publish_settings(dry_run=params.dry_run)
    target = check_target_repo(Path(params.target_repo))
    if not publish.dry_run and publish.repository:
        check_repository_access(publish.repository, target)
    return Preflight(target_repo=str(target), publish=publish)


def publish_pull_request(
    calibration: CalibrationResult, publish: PublishSettings, *, target_repo: str, output_dir: str,
    flow_run_url: str | None, database: Database,
) -> PublishResult:
    """Open or update the calibration pull request (a dry run: the branch in ``target_repo`` only) with the
    settings checked before the drain; proposals are remembered in ``database``."""
    from autopack.github import open_calibration_pr

    settings = get_settings()
    return open_calibration_pr(
        calibration,
        target_repo=Path(target_repo),
        token=None if publish.dry_run else github_token(),
        repository=publish.repository,
        base_url=settings.github_base_url,
        output_dir=Path(output_dir),
        dry_run=publish.dry_run,
        database=database,
        flow_run_url=flow_run_url,  # the PR body links back to the run that produced it
    )


def pipeline_guard(expect_db_id: str | None = None, allow_empty: bool = False) -> Database:
    """The pipeline's one database guard (``open_database``), with the row counts its log shows (the scan is
    affordable once per run). The steps after it reopen the verified database (``Database.ref``) unguarded."""
    return open_database(expect_db_id=expect_db_id, allow_empty=allow_empty, counts=True)


# --- the validation step -------------------------------------------------------------------------------

NO_TELEMETRY_HINT = (
    "the validation phase produced no telemetry: check TELEMETRY_DB_ENABLED=1 and that DATABASE_URL is the "
    "database you inspect (`autopack db identity`), then drain one phase by hand: "
    "`autopack drain one --run-id R --phase-id P --force`"
)


class ValidationFailed(AutopackError):
    exit_code = 1


class ValidationResult(BaseModel):
    """The validation step: the phase it drained (none: no QUEUED phase, skipped) and the telemetry it wrote."""

    run_id: str | None = None
    phase_id: str | None = None
    final_state: str | None = None
    telemetry_events: int = 0

    @property
    def skipped(self) -> bool:
        return self.run_id is None


def validation_phase(database: Database, run_id: str | None, phase_id: str | None) -> tuple[str, str] | None:
    """The phase to validate with: the one given, else the first QUEUED phase (of ``run_id``), else None."""
    if run_id is not None and phase_id is not None:
        return run_id, phase_id
    # a phase given back after its call was recorded is finished without a call: it would validate nothing
    finished_without_a_call = sa.exists().where(unfinished_success_of(Phase.run_id, Phase.phase_id))
    with database.session() as session:
        query = sa.select(Phase.run_id, Phase.phase_id).where(Phase.state == PhaseState.QUEUED,
                                                               sa.not_(finished_without_a_call))
        if run_id:
            query = query.where(Phase.run_id == run_id)
        row = session.execute(query.order_by(*run_order(Phase.run_id), Phase.phase_index).limit(1)).first()
    return (row[0], row[1]) if row else None


def validate_phase(database: Database, run_id: str, phase_id: str) -> ValidationResult:
    """Drain one phase (``--force``) of ``database``; no telemetry means a broken set-up: ``ValidationFailed``."""
    from autopack.execution.drain_one import drain_one

    result = drain_one(run_id, phase_id, force=True, db=database)
    return ValidationResult(run_id=run_id, phase_id=phase_id, final_state=result.final_state,
                            telemetry_events=result.telemetry_events)


def check_validation(result: ValidationResult) -> None:
    if not result.skipped and result.telemetry_events == 0:
        raise ValidationFailed(NO_TELEMETRY_HINT)


def drained_totals(drain: DrainSummary | None, validation: ValidationResult | None) -> tuple[int, int]:
    """Phase attempts and telemetry rows of the pipeline's drain: the validation phase's and the batch's."""
    phases = (drain.processed if drain else 0) + (0 if validation is None or validation.skipped else 1)
    events = (drain.telemetry_events if drain else 0) + (validation.telemetry_events if validation else 0)
    return phases, events


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


class PipelineResult(BaseModel):
    """What the ``telemetry-pipeline`` flow returns (its final state's data): read by ``summarise``, the CLI and
    the tests by attribute."""

    model_config = ConfigDict(frozen=True)

    db_id: str
    #: Phase attempts drained (retries included) and the telemetry rows they wrote: ``drained_totals``.
    phases_drained: int = 0
    telemetry_events: int = 0
    calibration: CalibrationOutcome = CalibrationOutcome(no_samples="not run")
    pull_request: PublishResult | None = None
    #: The checked, resolved checkout the pull request edits (a dry run writes its branch there).
    target_repo: str
    flow_run_url: str | None = None
    #: When the flow's body began (``time.time()``): the CLI tells Prefect's start-up from the steps by it.
    started_at: float | None = None
    #: Seconds per stage, in order (``autopack.timing.StageClock``).
    timings: dict[str, float] = Field(default_factory=dict)
    #: The final state's one line (``state_message``).
    message: str = ""


def state_message(result: PipelineResult) -> str:
    """One line for the run's final state: what happened, so run lists tell a failed gate from a PR."""
    outcome, pr = result.calibration, result.pull_request
    if not outcome.gate_passed:
        text = calibration_outcome(outcome)
    elif pr is None:
        text = "gate passed; no pull request"
    elif pr.status in ("opened", "updated") and pr.pr_number is not None:
        text = f"PR #{pr.pr_number} {pr.status}: {pr.pr_url}"
    elif pr.status == "dry_run":
        text = (f"dry run: branch {pr.branch or BOT_BRANCH} written to {result.target_repo}"
                f" ({(pr.commit_sha or '')[:12]}); PR body {pr.body_path}")
    else:
        text = pr.summary or pr.status
    return text if len(text) <= STATE_MESSAGE_LIMIT else text[: STATE_MESSAGE_LIMIT - 1] + "…"


def summarise(result: PipelineResult) -> list[str]:
    """The closing lines: the outcome, and where the report, the plot and the (would-be) pull request are."""
    calibration = result.calibration.result
    lines = [
        f"outcome: {result.message or state_message(result)}",
        f"phase attempts drained (retries included): {result.phases_drained}, telemetry events: {result.telemetry_events}",
    ]
    if calibration is not None:
        lines += [
            f"gate: {'passed' if calibration.gate.passed else 'not passed'} "
            f"({len(calibration.proposed_changes)} coefficient change(s) proposed; reasons in the report)",
            f"report: {calibration.report_path}",
            f"json:   {calibration.json_path}",
            f"plot:   {calibration.plot_path}",
        ]
    pr = result.pull_request
    if pr is not None:
        lines.append(f"pull request: {pr.summary or pr.pr_url or pr.status}")
    else:
        lines.append("pull request: none" + ("" if calibration is None else " (gate not passed)"))
    if result.flow_run_url:
        lines.append(f"flow run: {result.flow_run_url}")
    if result.timings:
        stages = (f"{stage.replace('_', ' ')} {seconds:.1f} s" for stage, seconds in result.timings.items())
        lines.append("time: " + ", ".join(stages))
    return lines
