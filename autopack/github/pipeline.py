"""Edit → verify → publish: the one call the calibration flow makes to propose new coefficients."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autopack.calibration.result import CalibrationResult
from autopack.config import get_settings
from autopack.errors import InputError, RefusedError
from autopack.github.body import not_updated_marker, pr_title, render_not_updated, render_pr_body
from autopack.github.errors import VerificationError
from autopack.github.estimator_edit import apply_proposal
from autopack.github.local import base_commit, body_file_name, publish_local, write_body
from autopack.github.memory import (
    PastProposal,
    ProposalMemory,
    declined_result,
    find_declined,
    note_pull_request_on_run,
    repository_key,
)
from autopack.github.proposal import (
    BOT_BRANCH,
    ESTIMATOR_PATH,
    MATERIAL_TOLERANCE,
    Change,
    parse_changes,
    proposal_hash,
)
from autopack.github.remote import ClientOptions, GitHubRepository
from autopack.github.result import PublishResult
from autopack.github.verify import VerificationReport, verify_edited_estimator
from autopack.logging import get_logger

if TYPE_CHECKING:
    from autopack.db.handle import Database

log = get_logger("autopack.github")
#: Written next to the PR body when a proposal fails verification (what failed, and pytest's output).
FAILURE_FILE = "verification_failure.md"


def open_calibration_pr(
    calibration: CalibrationResult,
    *,
    target_repo: Path,
    token: str | None = None,
    repository: str | None = None,
    base_url: str | None = None,
    output_dir: Path,
    dry_run: bool,
    base_branch: str | None = None,
    plot_link: str | None = None,
    run_tests: bool = True,
    python: str | None = None,
    require_gate: bool = True,
    options: ClientOptions | None = None,
    database: Database,
    flow_run_url: str | None = None,
    material_tolerance: float = MATERIAL_TOLERANCE,
) -> PublishResult:
    """Apply the calibration's proposed changes to ``target_repo``'s estimator, verify, and propose them.

    Publishes to GitHub when a token and a repository are known (arguments, else GITHUB_TOKEN /
    GITHUB_REPOSITORY) and ``dry_run`` is False; otherwise writes the bot branch into the local checkout
    (``publish_local``). The PR body is always written to the run's own ``output_dir/pull_request_body_<stamp>.md``
    (the calibration's stamp, as its report's; ``PublishResult.body_path``) and copied to
    ``output_dir/pull_request_body.md`` (the latest).

    A human's "no" lasts: every proposal is remembered in ``database``'s ``calibration_proposals``, closures
    are learned from GitHub (every proposal a closed bot PR ever carried), and a proposal that does not differ materially (``material_tolerance``) from one a
    human closed is skipped (status ``skipped_closed_by_human``), before anything is verified or written.

    Refuses (``RefusedError``) when the calibration gate did not pass, unless ``require_gate`` is False.
    A proposal that fails verification is never pushed: ``VerificationError`` names the failing test, its
    assertion and values; the details go to ``output_dir/verification_failure.md`` and, on GitHub, into
    a comment on the open PR saying why it was not updated. ``flow_run_url`` (the Prefect flow run) is
    linked from the body and the comment. Also raises ``StaleProposalError``/``GitHubError`` subclasses.
    """
    gate = calibration.gate
    if require_gate and not gate.passed:
        reasons = "; ".join(gate.reasons)
        raise RefusedError(f"the calibration gate did not pass{': ' + reasons if reasons else ''}; nothing proposed")
    changes = parse_changes(calibration.proposed_changes)
    metadata = calibration.metadata

    target_repo = Path(target_repo)
    estimator = target_repo / ESTIMATOR_PATH
    if not estimator.is_file():
        raise InputError(f"{estimator} does not exist",
                         hint="--target-repo must be a checkout of the autopack repository")
    original = estimator.read_text(encoding="utf-8")
    edited = apply_proposal(original, changes, metadata)
    digest = proposal_hash(changes)

    settings = get_settings()
    if token is None and settings.github_token is not None:
        token = settings.github_token.get_secret_value() or None
    repository = repository or settings.github_repository
    remote = not dry_run and bool(token) and bool(repository)
    memory = ProposalMemory(database, repository_key(repository, target_repo))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    job = _Job(calibration, changes, digest, original, edited, target_repo, output_dir, memory, material_tolerance,
               run_tests, python, flow_run_url, [token] if token else [])

    if remote:
        with GitHubRepository(token=token, repository=repository, base_url=base_url, base_branch=base_branch,
                              options=options) as gh:
            gh.check_base(original)
            memory.learn(gh.history(learned=memory.learned_closures(), known_values=memory.known_values()))
            declined = job.declined()
            if declined is not None:
                return job.done(gh.skipped(declined, digest))
            report = job.verify(open_pull=gh.open_pull, comment=gh.comment_once)
            body = job.body(report, plot_link=plot_link, inline=True, commit=gh.base_sha,
                            commit_url=gh.commit_url(gh.base_sha))
            result = gh.publish(edited_source=edited, body=body, title=pr_title(calibration), proposal=digest)
        body_path = write_body(output_dir, body, body_file_name(calibration))
        return job.done(result.model_copy(update={"body_path": body_path}))

    if not dry_run:
        log.info("no GitHub token or repository: publishing the proposal to a local branch instead")
    declined = job.declined()
    if declined is not None:
        return job.done(declined_result(declined, digest, branch=BOT_BRANCH, base=base_branch))
    report = job.verify()
    if plot_link is None and calibration.plot_path:
        plot_link = os.path.relpath(Path(calibration.plot_path).resolve(), output_dir.resolve())
    body = job.body(report, plot_link=plot_link, inline=False, commit=base_commit(target_repo, base_branch))
    return job.done(publish_local(target_repo, edited, body, output_dir=output_dir, title=pr_title(calibration),
                                  proposal=digest, base=base_branch, original_source=original,
                                  body_name=body_file_name(calibration)))


@dataclass
class _Job:
    """One proposal on its way: the steps ``open_calibration_pr`` runs in the same order for GitHub and git."""

    calibration: CalibrationResult
    changes: list[Change]
    digest: str
    original: str
    edited: str
    target_repo: Path
    output_dir: Path
    memory: ProposalMemory
    tolerance: float
    run_tests: bool
    python: str | None
    flow_run_url: str | None
    secrets: list[str]

    def declined(self) -> PastProposal | None:
        return find_declined(self.changes, self.digest, self.memory.past(), self.tolerance)

    def verify(self, *, open_pull: Callable[[], Any] | None = None,
               comment: Callable[[Any, str, str], str] | None = None) -> VerificationReport:
        """Verify the edited estimator; on failure write the details, comment on the open PR, and raise."""
        report = verify_edited_estimator(self.target_repo, self.edited, self.changes, original_source=self.original,
                                         run_tests=self.run_tests, python=self.python)
        if report.ok:
            return report
        details = self.output_dir / FAILURE_FILE
        pr = open_pull() if open_pull is not None else None
        text = render_not_updated(self.changes, report, self.digest, pr_number=pr.number if pr is not None else None,
                                  flow_run_url=self.flow_run_url, extra_secrets=self.secrets)
        details.write_text(text, encoding="utf-8")
        comment_url = comment(pr, text, not_updated_marker(self.digest)) if pr is not None and comment else None
        where = (f"; PR #{pr.number} was not updated (comment: {comment_url})" if pr is not None
                 else "; nothing was pushed")
        raise VerificationError(
            f"proposal {self.digest[:12]} failed verification: {report.failure_summary()}{where}",
            hint=f"details and the pytest output: {details}", report=report, details_path=details,
            comment_url=comment_url,
        )

    def body(self, report: VerificationReport, *, plot_link: str | None, inline: bool, commit: str | None,
             commit_url: str | None = None) -> str:
        return render_pr_body(
            self.calibration, report, plot_link=plot_link, extra_secrets=self.secrets, flow_run_url=self.flow_run_url,
            code_commit=commit, code_commit_url=commit_url, inline_chart=inline, original_source=self.original,
            edited_source=self.edited,
        )

    def done(self, result: PublishResult) -> PublishResult:
        """Remember what was published (and on which calibration run), then hand the result back."""
        metadata = self.calibration.metadata
        run_id = metadata.calibration_run_id
        self.memory.record(result, self.changes, db_id=metadata.db_id, calibration_run_id=run_id)
        note_pull_request_on_run(self.memory.database, run_id, result)
        log.info("%s", result.summary)
        return result
