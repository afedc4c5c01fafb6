"""What the bot proposed before, and what humans did with it: a closed pull request's "no" lasts.

GitHub is the truth about pull requests (``remote.GitHubRepository.history`` reads every closed bot PR
and every proposal its commits carried, by the commit trailer); the database table
``calibration_proposals`` remembers each proposal by hash with its values and status, so a later run,
a dry run and a fresh GitHub client all see the same history. A new proposal is published only when it
differs *materially* (``proposal.material_difference``) from every proposal a human closed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from autopack.db.migrate import sqlite_path
from autopack.db.models import CalibrationProposal, CalibrationRun, utcnow
from autopack.errors import DatabaseUrlError, InputError, SchemaNotMigratedError
from autopack.github.proposal import MATERIAL_TOLERANCE, Change, canonical_changes, material_difference, parse_changes
from autopack.github.result import PublishResult

if TYPE_CHECKING:
    from autopack.db.handle import Database

ProposalStatus = Literal["open", "closed", "merged", "superseded"]
UPGRADE_HINT = "run `autopack db upgrade` first"


@dataclass(frozen=True)
class PastProposal:
    """A proposal the bot made before: its hash, its values (None when unknown) and what became of it."""

    digest: str
    changes: tuple[Change, ...] | None
    status: ProposalStatus
    pr_number: int | None = None
    pr_url: str | None = None
    closed_at: datetime | None = None
    commit_sha: str | None = None

    def where(self) -> str:
        """Where a reviewer can see it: ``PR #3 <url>`` or the short hash."""
        if self.pr_number is not None:
            return f"PR #{self.pr_number}" + (f" {self.pr_url}" if self.pr_url else "")
        return f"proposal {self.digest[:12]}"


@dataclass(frozen=True)
class PullHistory:
    """One bot pull request as GitHub shows it: its state and every proposal its bot commits carried."""

    number: int
    url: str | None
    state: Literal["open", "closed", "merged"]
    closed_at: datetime | None
    #: The proposal in the body's marker (what the PR showed last), if the marker is intact.
    final: str | None
    #: Every proposal the bot's commits carried, oldest first (values recovered from the commits' files).
    carried: tuple[PastProposal, ...] = ()


def proposals_of(pulls: Iterable[PullHistory]) -> list[PastProposal]:
    """Each proposal's status from the pull requests that carried it.

    Closed unmerged: every proposal it ever carried is ``closed`` (a human declined all of them, not only
    the last). Merged: the final one is ``merged``, earlier ones ``superseded``. Open: the final one is
    ``open``, earlier ones ``superseded``.
    """
    found: list[PastProposal] = []
    for pull in pulls:
        carried = {p.digest: p for p in pull.carried}
        digests = list(carried)
        if pull.final and pull.final not in carried:
            digests.append(pull.final)
        last = pull.final or (digests[-1] if digests else None)
        for digest in digests:
            status: ProposalStatus
            if pull.state == "closed":
                status = "closed"
            elif digest == last:
                status = "merged" if pull.state == "merged" else "open"
            else:
                status = "superseded"
            known = carried.get(digest)
            found.append(PastProposal(
                digest=digest, changes=known.changes if known else None, status=status, pr_number=pull.number,
                pr_url=pull.url, closed_at=pull.closed_at if pull.state != "open" else None,
                commit_sha=known.commit_sha if known else None,
            ))
    return found


def find_declined(changes: Sequence[Change], digest: str, past: Iterable[PastProposal],
                  tolerance: float = MATERIAL_TOLERANCE) -> PastProposal | None:
    """The closed proposal ``changes`` does not differ materially from (same hash, or values within tolerance)."""
    closed = sorted((p for p in past if p.status == "closed"),
                    key=lambda p: p.closed_at or datetime.min, reverse=True)
    for previous in closed:
        if previous.digest == digest:
            return previous
    for previous in closed:
        if previous.changes is not None and material_difference(changes, previous.changes, tolerance) is None:
            return previous
    return None


def declined_result(declined: PastProposal, proposal: str, *, branch: str, base: str | None) -> PublishResult:
    """The outcome of a run whose proposal a human already declined: nothing verified, nothing written."""
    same = "this exact proposal" if declined.digest == proposal else (
        "a proposal this one does not differ materially from")
    return PublishResult(
        status="skipped_closed_by_human", branch=branch, base=base, pr_number=declined.pr_number,
        pr_url=declined.pr_url, proposal=proposal,
        summary=f"skipped: {declined.where()} with {same} was closed by a human; not re-proposing it",
    )


def repository_key(repository: str | None, target_repo: Path) -> str:
    """Whose history applies: ``owner/name`` when the GitHub repository is known, else the local checkout."""
    return repository if repository else f"local:{Path(target_repo).resolve()}"


class ProposalMemory:
    """The ``calibration_proposals`` rows of one repository."""

    def __init__(self, database: Database, repository: str) -> None:
        self.database = database
        self.repository = repository
        self._check_schema()

    def _check_schema(self) -> None:
        path = sqlite_path(self.database.url)
        if path is not None and not path.exists():
            raise SchemaNotMigratedError(
                f"no database file at {path} to remember calibration proposals in", hint=UPGRADE_HINT)
        try:
            has_table = sa.inspect(self.database.engine).has_table(CalibrationProposal.__tablename__)
        except OperationalError as exc:
            raise DatabaseUrlError(f"cannot open the database at {self.database.masked_url}: {exc.orig}",
                                   hint="check DATABASE_URL and that the server is running") from exc
        if not has_table:
            raise SchemaNotMigratedError(
                f"{self.database.masked_url} has no calibration_proposals table (schema behind the code)",
                hint=UPGRADE_HINT)

    # --- reading --------------------------------------------------------------------------------

    def past(self) -> list[PastProposal]:
        with self.database.session() as session:
            rows = session.scalars(sa.select(CalibrationProposal).where(
                CalibrationProposal.repository == self.repository).order_by(CalibrationProposal.id)).all()
            return [_past(row) for row in rows]

    def learned_closures(self) -> set[tuple[int, datetime]]:
        """(PR number, closed at) of closed/merged PRs already learned: their commits need not be read again."""
        with self.database.session() as session:
            rows = session.execute(sa.select(CalibrationProposal.pr_number, CalibrationProposal.closed_at).where(
                CalibrationProposal.repository == self.repository,
                CalibrationProposal.pr_number.is_not(None), CalibrationProposal.closed_at.is_not(None),
                CalibrationProposal.changes.is_not(None))).all()
            # the query selects no NULL number or closing time; the test only tells the type checker so
            return {(int(number), closed) for number, closed in rows if number is not None and closed is not None}

    def known_values(self) -> set[str]:
        """Hashes whose values are remembered (no need to recover them from a commit)."""
        with self.database.session() as session:
            return set(session.scalars(sa.select(CalibrationProposal.proposal_hash).where(
                CalibrationProposal.repository == self.repository, CalibrationProposal.changes.is_not(None))))

    # --- writing --------------------------------------------------------------------------------

    def learn(self, pulls: Sequence[PullHistory]) -> None:
        """Record what GitHub says happened to each bot PR's proposals (GitHub's state wins)."""
        for proposal in proposals_of(pulls):
            self._upsert(proposal, source="github")

    def record(self, result: PublishResult, changes: Sequence[Change], *, db_id: str | None = None,
               calibration_run_id: int | None = None) -> None:
        """Remember what this run published (or wrote locally); the proposal it replaced becomes superseded."""
        if result.proposal is None or result.status not in ("opened", "updated", "dry_run"):
            return
        source = "local" if result.status == "dry_run" else "github"
        self._upsert(PastProposal(result.proposal, tuple(changes), "open", result.pr_number, result.pr_url,
                                  commit_sha=result.commit_sha), source=source, db_id=db_id,
                     calibration_run_id=calibration_run_id)
        with self.database.session() as session:
            same_place = (CalibrationProposal.pr_number == result.pr_number if result.pr_number is not None
                          else sa.and_(CalibrationProposal.pr_number.is_(None), CalibrationProposal.source == source))
            session.execute(sa.update(CalibrationProposal).where(
                CalibrationProposal.repository == self.repository, CalibrationProposal.status == "open",
                CalibrationProposal.proposal_hash != result.proposal, same_place,
            ).values(status="superseded", updated_at=utcnow()))

    def _upsert(self, proposal: PastProposal, *, source: str, db_id: str | None = None,
                calibration_run_id: int | None = None) -> None:
        for attempt in (1, 2):  # a concurrent run may insert the same hash between our read and our write
            try:
                with self.database.session() as session:
                    row = session.scalars(sa.select(CalibrationProposal).where(
                        CalibrationProposal.repository == self.repository,
                        CalibrationProposal.proposal_hash == proposal.digest)).one_or_none()
                    if row is None:
                        row = CalibrationProposal(repository=self.repository, proposal_hash=proposal.digest,
                                                  source=source, first_proposed_at=utcnow())
                        session.add(row)
                    row.status = proposal.status
                    if proposal.changes is not None:
                        row.changes = canonical_changes(proposal.changes)
                    if proposal.pr_number is not None:
                        row.pr_number, row.pr_url = proposal.pr_number, proposal.pr_url
                        row.source = source
                    row.commit_sha = proposal.commit_sha or row.commit_sha
                    row.closed_at = _naive(proposal.closed_at) if proposal.status != "open" else None
                    row.db_id = db_id or row.db_id
                    row.calibration_run_id = calibration_run_id or row.calibration_run_id
                    row.updated_at = utcnow()
                return
            except IntegrityError:
                if attempt == 2:
                    raise


def note_pull_request_on_run(database: Database, calibration_run_id: object, result: PublishResult) -> None:
    """Fill ``calibration_runs.pr_*`` of the calibration that led to ``result`` (when its id is known)."""
    if isinstance(calibration_run_id, bool) or not isinstance(calibration_run_id, int):
        return
    with database.session() as session:
        run = session.get(CalibrationRun, calibration_run_id)
        if run is not None:
            run.pr_url = result.pr_url or run.pr_url
            run.pr_number = result.pr_number or run.pr_number
            run.pr_state = result.status


def _past(row: CalibrationProposal) -> PastProposal:
    changes: tuple[Change, ...] | None = None
    if row.changes:
        try:
            changes = tuple(parse_changes(row.changes))
        except InputError:  # a row written by hand or by a future version: fall back to the hash alone
            changes = None
    return PastProposal(row.proposal_hash, changes, row.status,  # type: ignore[arg-type]
                        row.pr_number, row.pr_url, row.closed_at, row.commit_sha)


def _naive(when: datetime | None) -> datetime | None:
    """UTC without tzinfo, as every DateTime column of this schema stores it."""
    if when is None:
        return None
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when
