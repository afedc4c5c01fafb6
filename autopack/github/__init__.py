"""The pull-request half of calibration: edit the estimator's coefficients, verify, propose as a PR.

Modules: ``estimator_edit`` (libcst edit), ``verify`` (fresh-interpreter checks in a temporary copy),
``body`` (PR title/markdown, the not-updated comment), ``remote`` (PyGithub publisher and the bot PRs'
history), ``local`` (dry-run branch with git plumbing), ``memory`` (every proposal and what humans did
with it, in the database), ``pipeline`` (``open_calibration_pr``: all of it in one call).
"""

from __future__ import annotations

from autopack.github.body import pr_title, render_not_updated, render_pr_body
from autopack.github.estimator_edit import apply_proposal, read_stamp, read_tables
from autopack.github.local import publish_local
from autopack.github.memory import PastProposal, ProposalMemory, find_declined
from autopack.github.pipeline import open_calibration_pr
from autopack.github.proposal import (
    BOT_BRANCH,
    ESTIMATOR_PATH,
    MATERIAL_TOLERANCE,
    PR_LABELS,
    find_marker,
    marker,
    material_difference,
    proposal_hash,
)
from autopack.github.remote import ClientOptions, GitHubRepository, RetryPolicy, publish_pull_request
from autopack.github.result import BotIdentity, PublishResult
from autopack.github.verify import VerificationReport, verify_edited_estimator

__all__ = [
    "BOT_BRANCH",
    "ESTIMATOR_PATH",
    "MATERIAL_TOLERANCE",
    "PR_LABELS",
    "BotIdentity",
    "ClientOptions",
    "GitHubRepository",
    "PastProposal",
    "ProposalMemory",
    "PublishResult",
    "RetryPolicy",
    "VerificationReport",
    "apply_proposal",
    "find_declined",
    "find_marker",
    "marker",
    "material_difference",
    "open_calibration_pr",
    "pr_title",
    "proposal_hash",
    "publish_local",
    "publish_pull_request",
    "read_stamp",
    "read_tables",
    "render_not_updated",
    "render_pr_body",
    "verify_edited_estimator",
]
