"""Edit → verify → publish: the one call the calibration flow makes to propose new coefficients."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autopack.config import get_settings
from autopack.errors import InputError, RefusedError
from autopack.github.body import pr_title, render_pr_body
from autopack.github.estimator_edit import apply_proposal
from autopack.github.local import BODY_FILE, publish_local
from autopack.github.proposal import ESTIMATOR_PATH, parse_changes, proposal_hash
from autopack.github.remote import ClientOptions, publish_pull_request
from autopack.github.result import PublishResult
from autopack.github.verify import verify_edited_estimator
from autopack.logging import get_logger

log = get_logger("autopack.github")


def load_calibration(path: Path) -> dict[str, Any]:
    """Read a calibration JSON file (the contract produced by the calibration step)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read calibration JSON {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"calibration JSON {path} is not an object")
    return data


def open_calibration_pr(
    calibration: Mapping[str, Any],
    *,
    target_repo: Path,
    token: str | None = None,
    repository: str | None = None,
    base_url: str | None = None,
    output_dir: Path,
    dry_run: bool = False,
    base_branch: str | None = None,
    plot_link: str | None = None,
    run_tests: bool = True,
    python: str | None = None,
    require_gate: bool = True,
    options: ClientOptions | None = None,
) -> PublishResult:
    """Apply the calibration's proposed changes to ``target_repo``'s estimator, verify, and propose them.

    Publishes to GitHub when a token and a repository are known (arguments, else GITHUB_TOKEN /
    GITHUB_REPOSITORY) and ``dry_run`` is False; otherwise writes the bot branch into the local checkout
    (``publish_local``). The PR body is always written to ``output_dir/pull_request_body.md``.
    Refuses (``RefusedError``) when the calibration gate did not pass, unless ``require_gate`` is False.
    Raises ``StaleProposalError``/``VerificationError``/``GitHubError`` subclasses; nothing is published then.
    """
    if not isinstance(calibration, Mapping):
        raise InputError("calibration JSON must be an object")
    gate = calibration.get("gate") or {}
    if require_gate and not (isinstance(gate, Mapping) and gate.get("passed") is True):
        reasons = "; ".join(str(r) for r in (gate.get("reasons") or [])) if isinstance(gate, Mapping) else ""
        raise RefusedError(f"the calibration gate did not pass{': ' + reasons if reasons else ''}; nothing proposed")
    changes = parse_changes(calibration.get("proposed_changes"))
    metadata = calibration.get("metadata") or {}

    target_repo = Path(target_repo)
    estimator = target_repo / ESTIMATOR_PATH
    if not estimator.is_file():
        raise InputError(f"{estimator} does not exist",
                         hint="--target-repo must be a checkout of the autopack repository")
    original = estimator.read_text(encoding="utf-8")
    edited = apply_proposal(original, changes, metadata)
    report = verify_edited_estimator(target_repo, edited, changes, original_source=original, run_tests=run_tests,
                                     python=python)
    report.raise_for_failure()

    settings = get_settings()
    if token is None and settings.github_token is not None:
        token = settings.github_token.get_secret_value() or None
    repository = repository or settings.github_repository
    remote = not dry_run and bool(token) and bool(repository)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if plot_link is None and not remote and isinstance(calibration.get("plot_path"), str) and calibration["plot_path"]:
        plot_link = os.path.relpath(Path(calibration["plot_path"]).resolve(), output_dir.resolve())

    body = render_pr_body(calibration, report, plot_link=plot_link, extra_secrets=[token] if token else ())
    title = pr_title(calibration)
    digest = proposal_hash(changes)
    if not remote:
        if not dry_run:
            log.info("no GitHub token or repository: publishing the proposal to a local branch instead")
        return publish_local(target_repo, edited, body, output_dir=output_dir, title=title, proposal=digest,
                             base=base_branch, original_source=original)

    result = publish_pull_request(
        edited_source=edited, body=body, title=title, proposal=digest, token=token, repository=repository,
        base_url=base_url, base_branch=base_branch, original_source=original, options=options,
    )
    body_path = output_dir / BODY_FILE
    body_path.write_text(body, encoding="utf-8")
    return dataclasses.replace(result, body_path=body_path)
