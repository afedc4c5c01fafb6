"""What a reviewer reads in the Prefect UI, rendered: the markdown and tables of the flows' artifacts.

Pure functions of the steps' results (a drain session's summary, the calibration, the pull request), so
``flows/`` only hands them to Prefect, and they are tested without a Prefect server.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from autopack.calibration.result import CalibrationOutcome, CalibrationResult
from autopack.db.handle import Database
from autopack.execution.batch import DrainSummary
from autopack.execution.batch_report import format_summary
from autopack.execution.sessions import SessionState, SessionStore
from autopack.github.result import PublishResult
from autopack.logging import get_logger

log = get_logger(__name__)

#: Columns of the ``calibration-groups`` table artifact.
GROUP_COLUMNS = ("category", "complexity", "n", "n_censored", "median_ratio", "pooling_weight", "budget_factor",
                 "confidence", "original_confidence")


def drain_session_markdown(state: SessionState) -> str:
    """The ``batch-drain-summary`` artifact of the drain's own run: the summary the command line prints."""
    return f"## Batch drain {state.status}\n\n```\n{format_summary(state)}\n```"


def drain_summary_markdown(drained: DrainSummary, database: Database) -> str:
    """The drain session's summary (kept in ``database``) as the CLI prints it, else the counts the drain returned."""
    try:
        session = SessionStore(database).load(drained.session_id)
        if session is not None:
            return f"```\n{format_summary(session)}\n```"
    except Exception as exc:  # the summary is a courtesy: the counts below say the same in short
        log.warning("drain summary unavailable (%s); showing the counts", exc)
    rows = [f"| {key} | {value} |" for key, value in drained.model_dump().items()]
    return "\n".join(["| | |", "|---|---|", *rows])


def calibration_report_markdown(result: CalibrationResult) -> str | None:
    """The report with its plot embedded as a ``data:`` URI: the UI cannot load the PNG by a relative name."""
    report_path, plot_path = result.report_path, result.plot_path
    if not report_path or not Path(report_path).is_file():
        return None
    markdown = Path(report_path).read_text(encoding="utf-8")
    if plot_path and Path(plot_path).is_file():
        encoded = base64.b64encode(Path(plot_path).read_bytes()).decode("ascii")
        markdown = markdown.replace(f"]({Path(plot_path).name})", f"](data:image/png;base64,{encoded})")
    return markdown


def calibration_group_rows(result: CalibrationResult) -> list[dict[str, Any]]:
    """The ``calibration-groups`` table: one row per group, ``GROUP_COLUMNS``."""
    return [{k: getattr(g, k) for k in GROUP_COLUMNS} for g in result.groups]


def gate_markdown(outcome: CalibrationOutcome) -> str:
    """The ``calibration-gate`` artifact: passed or not, the reasons, and the changes a pull request proposes."""
    passed = outcome.gate_passed
    lines = [f"## Calibration gate {'passed' if passed else 'not passed'}", ""]
    calibration = outcome.result
    if calibration is None:
        lines += [f"No calibration: {outcome.no_samples}", "", "No pull request was opened."]
        return "\n".join(lines)
    lines += [f"- {reason}" for reason in calibration.gate.reasons]
    changes = calibration.proposed_changes
    if passed and changes:
        lines += ["", "| coefficient | group | from | to |", "|---|---|---:|---:|"]
        for change in changes:
            key = "/".join(change.key)
            old = "–" if change.old is None else change.old
            lines.append(f"| {change.coefficient} | {key} | {old} | {change.new} |")
    if not passed:
        lines += ["", "No pull request was opened."]
    return "\n".join(lines)


def pull_request_markdown(result: PublishResult) -> str:
    """What the reviewer needs: a link to the PR (or to the dry run's PR body), the branch and the commit."""
    where = (f"branch `{result.branch}` @ `{(result.commit_sha or '')[:12]}`"
             + (f" into `{result.base}`" if result.base else ""))
    lines = ["## Calibration pull request", ""]
    if result.pr_url:
        lines.append(f"**[PR #{result.pr_number}]({result.pr_url})** {result.status}: {where}")
    elif result.status == "dry_run":
        lines.append(f"**Dry run**: {where} written to the local checkout; nothing was sent to GitHub.")
    else:
        lines.append(f"**{result.status}**: {result.summary}")
    if result.body_path:
        body = Path(result.body_path)
        lines += ["", f"Pull request body: [{body.name}]({body.resolve().as_uri()}) (`{body}`)"]
    return "\n".join(lines)


def verification_failure_markdown(details_path: str | None, one_line: str) -> str:
    """The failed verification's details (which test failed and why), else its one line."""
    details = Path(details_path) if details_path else None
    return details.read_text(encoding="utf-8") if details is not None and details.is_file() else one_line
