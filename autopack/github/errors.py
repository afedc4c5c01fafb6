"""Errors of the calibration pull-request pipeline: each is one line a user can act on."""

from __future__ import annotations

from autopack.errors import AutopackError, ConfigError, InputError


class EstimatorEditError(InputError):
    """The proposal cannot be applied to ``token_estimator.py`` (unknown table, non-literal value, bad key)."""


class StaleProposalError(EstimatorEditError):
    """A proposed change's ``old`` value is not the file's current value: the proposal is out of date."""


class VerificationError(AutopackError):
    """The edited estimator failed verification (import, table values or its tests): nothing was published.

    ``details_path`` is the written report (failing test, assertion, values, pytest output) and
    ``comment_url`` the comment left on the open pull request saying why it was not updated, when any.
    """

    def __init__(self, message: str, *, hint: str | None = None, report: object = None,
                 details_path: object = None, comment_url: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.report = report
        self.details_path = details_path
        self.comment_url = comment_url


class GitHubError(AutopackError):
    """GitHub refused or failed a request that retrying did not fix."""


class GitHubAuthError(GitHubError, ConfigError):
    """The token was rejected (401) or lacks a permission (403). Never carries the token itself."""


class GitHubRateLimitError(GitHubError):
    """Still rate limited after the bounded number of retries (or the reset is too far away to wait)."""


class StaleBaseError(AutopackError):
    """The base branch's ``token_estimator.py`` is not the file the proposal was computed against."""


class LocalPublishError(AutopackError):
    """The dry-run branch could not be written into the local git repository."""
