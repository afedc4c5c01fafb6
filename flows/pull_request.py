"""``open-calibration-pr``: turn a gated calibration into a reviewed pull request (never merged)."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed

from autopack.calibration.result import CalibrationResult
from autopack.config import get_settings
from autopack.db.handle import DatabaseRef, database_at
from autopack.github import open_calibration_pr
from autopack.github.errors import VerificationError
from autopack.pipeline import check_publish_settings

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


@task(name="publish-calibration-pr")
def publish_task(
    calibration: CalibrationResult, target_repo: str, output_dir: str, dry_run: bool, flow_run_url: str | None = None,
    database: DatabaseRef | None = None,
) -> dict[str, Any]:
    settings = get_settings()
    token = None if dry_run else github_token()
    check_publish_settings(dry_run=dry_run, token=token, repository=settings.github_repository)
    try:
        result = open_calibration_pr(
            calibration,
            target_repo=Path(target_repo),
            token=token,
            repository=settings.github_repository,
            base_url=settings.github_base_url,
            output_dir=Path(output_dir),
            dry_run=dry_run,
            database=database.open() if database else database_at(),
            flow_run_url=flow_run_url,  # the PR body links back to the run that produced it
        )
    except VerificationError as exc:
        # Nothing was pushed; the reviewer sees which test failed and why, next to the run.
        details = Path(str(exc.details_path)) if exc.details_path else None
        text = details.read_text(encoding="utf-8") if details is not None and details.is_file() else exc.one_line()
        create_markdown_artifact(key="calibration-verification-failure", markdown=text,
                                 description=exc.one_line()[:500])
        raise
    data = asdict(result) if is_dataclass(result) else dict(result)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


def pull_request_markdown(result: dict[str, Any]) -> str:
    """What the reviewer needs: a link to the PR (or to the dry run's PR body), the branch and the commit."""
    status = result.get("status")
    where = (f"branch `{result.get('branch')}` @ `{str(result.get('commit_sha') or '')[:12]}`"
             + (f" into `{result['base']}`" if result.get("base") else ""))
    lines = ["## Calibration pull request", ""]
    if result.get("pr_url"):
        lines.append(f"**[PR #{result.get('pr_number')}]({result['pr_url']})** {status}: {where}")
    elif status == "dry_run":
        lines.append(f"**Dry run**: {where} written to the local checkout; nothing was sent to GitHub.")
    else:
        lines.append(f"**{status}**: {result.get('summary')}")
    if result.get("body_path"):
        body = Path(result["body_path"])
        lines += ["", f"Pull request body: [{body.name}]({body.resolve().as_uri()}) (`{body}`)"]
    return "\n".join(lines)


def publish_pull_request_artifact(result: dict[str, Any]) -> None:
    create_markdown_artifact(key="calibration-pull-request", markdown=pull_request_markdown(result),
                             description=str(result.get("summary") or result.get("status")))


@flow(name="open-calibration-pr")
def open_calibration_pr_flow(
    calibration: CalibrationResult,
    target_repo: str = ".",
    output_dir: str = "reports",
    dry_run: bool = False,
    flow_run_url: str | None = None,
    database: DatabaseRef | None = None,
) -> Any:
    """``database``: where proposals are remembered (the calling flow's verified database; else the settings')."""
    result = publish_task(calibration, target_repo, output_dir, dry_run, flow_run_url, database)
    publish_pull_request_artifact(result)
    summary = str(result.get("summary") or result.get("status"))
    get_run_logger().info("%s", summary)
    return Completed(message=summary[:300], data=result)
