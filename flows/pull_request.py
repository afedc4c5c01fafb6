"""``open-calibration-pr``: turn a gated calibration into a reviewed pull request (never merged)."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from autopack.config import get_settings
from autopack.github import open_calibration_pr

SECRET_BLOCK = "github-token"


def github_token() -> str | None:
    """The token from the Prefect Secret block ``github-token``, else ``GITHUB_TOKEN``, else None."""
    try:
        from prefect.blocks.system import Secret

        value = Secret.load(SECRET_BLOCK).get()
        if value:
            return str(value)
    except Exception:  # no block registered (the embedded default): fall back to the environment
        pass
    token = get_settings().github_token
    return token.get_secret_value() if token else None


@task(name="publish-calibration-pr")
def publish_task(calibration: dict[str, Any], target_repo: str, output_dir: str, dry_run: bool) -> dict[str, Any]:
    settings = get_settings()
    token = None if dry_run else github_token()
    result = open_calibration_pr(
        calibration,
        target_repo=Path(target_repo),
        token=token,
        repository=settings.github_repository,
        base_url=settings.github_base_url,
        output_dir=Path(output_dir),
        dry_run=dry_run or not token,
    )
    data = asdict(result) if is_dataclass(result) else dict(result)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


@flow(name="open-calibration-pr")
def open_calibration_pr_flow(
    calibration: dict[str, Any], target_repo: str = ".", output_dir: str = "reports", dry_run: bool = False
) -> dict[str, Any]:
    result = publish_task(calibration, target_repo, output_dir, dry_run)
    summary = result.get("summary") or f"{result.get('status')}: {result.get('pr_url') or result.get('branch')}"
    create_markdown_artifact(key="calibration-pull-request", markdown=f"**Pull request**: {summary}")
    get_run_logger().info("%s", summary)
    return result
