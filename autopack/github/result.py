"""What a publish attempt did, in a form the flow can log as one line and the CLI can print."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

PublishStatus = Literal["opened", "updated", "skipped_closed_by_human", "left_alone_human_commits", "dry_run"]


@dataclass(frozen=True)
class BotIdentity:
    """The git author/committer of the bot's commits; a commit by anyone else marks a branch as human-touched."""

    name: str = "autopack-calibration-bot"
    email: str = "autopack-calibration-bot@users.noreply.github.com"


DEFAULT_IDENTITY = BotIdentity()

#: Commit trailer naming the proposal a bot commit carries (the second half of "is this commit ours").
PROPOSAL_TRAILER = "Autopack-Calibration-Proposal"


_TRAILER_RE = re.compile(rf"^{PROPOSAL_TRAILER}:\s*([0-9a-f]{{64}})\s*$", re.MULTILINE)


def commit_message(title: str, proposal: str) -> str:
    return (
        f"{title}\n\nProposed by autopack's calibration pipeline; never merged automatically.\n\n"
        f"{PROPOSAL_TRAILER}: {proposal}\n"
    )


def proposal_in_message(message: str | None) -> str | None:
    """The proposal hash a bot commit's trailer names (the last one, as git reads trailers), or None."""
    found = _TRAILER_RE.findall(message or "")
    return found[-1] if found else None


def is_bot_commit(author_email: str | None, committer_email: str | None, message: str | None,
                  identity: BotIdentity) -> bool:
    """A commit is the bot's when the bot authored and committed it and it carries the proposal trailer."""
    bot = identity.email.lower()
    return (
        (author_email or "").lower() == bot
        and (committer_email or "").lower() == bot
        and f"\n{PROPOSAL_TRAILER}: " in f"\n{message or ''}"
    )


class PublishResult(BaseModel):
    """Outcome of one publish: ``status`` says what happened; the rest locates it.

    A pydantic model: the pull-request step's Prefect result, and the ``pull_request`` of the pipeline's. It holds
    no token (``pr_url`` is the pull request's page)."""

    model_config = ConfigDict(frozen=True)

    status: PublishStatus
    branch: str
    base: str | None = None
    pr_number: int | None = None
    pr_url: str | None = None
    commit_sha: str | None = None
    proposal: str | None = None
    body_path: Path | None = None
    #: One line for logs, the CLI and the flow's artifact (what was, or would have been, done).
    summary: str = ""
