"""Pytest fixtures: a served fake GitHub whose every exchange is checked against GitHub's OpenAPI.

Import them into a test module (``from github_server.fixtures import fake_github, github_openapi``).
Without the npm package the OpenAPI checks fail when CI=true and are skipped elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import pytest

from github_server.app import FakeGitHub
from github_server.openapi import GitHubOpenAPI, SpecUnavailable

BOT_TOKEN = "ghp_FakeBotToken0123456789abcdefABCDEF01"
BOT_LOGIN = "autopack-bot"
REPOSITORY = "acme/autopack"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@functools.cache
def _load() -> GitHubOpenAPI | SpecUnavailable:
    try:
        return GitHubOpenAPI.load()
    except SpecUnavailable as exc:
        return exc


def openapi_or_skip() -> GitHubOpenAPI:
    loaded = _load()
    if isinstance(loaded, SpecUnavailable):
        if in_ci():
            pytest.fail(f"CI=true but {loaded}", pytrace=False)
        pytest.skip(str(loaded))
    return loaded


@pytest.fixture(scope="session")
def github_openapi() -> GitHubOpenAPI:
    """GitHub's OpenAPI description (the operations the fake implements); required in CI."""
    return openapi_or_skip()


def check_traffic(fake: FakeGitHub) -> None:
    """Fail the test when any recorded exchange does not match GitHub's OpenAPI description."""
    loaded = _load()
    if isinstance(loaded, SpecUnavailable):
        if in_ci():
            pytest.fail(f"CI=true but {loaded}", pytrace=False)
        return
    problems = loaded.check(fake.exchanges)
    if problems:
        pytest.fail("the fake GitHub's traffic does not match GitHub's OpenAPI description:\n"
                    + "\n".join(f"  {p}" for p in problems[:20]), pytrace=False)


@contextlib.contextmanager
def served_fake(prefix: str = "") -> Iterator[FakeGitHub]:
    """A fresh fake GitHub on 127.0.0.1 (optionally under a GHES-style prefix) with the bot's token."""
    fake = FakeGitHub(prefix=prefix).start()
    fake.add_token(BOT_TOKEN, BOT_LOGIN)
    try:
        yield fake
    finally:
        fake.stop()
    check_traffic(fake)


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    """A served fake GitHub; on teardown every request/response is validated against GitHub's OpenAPI
    description (a mismatch fails the test; locally, without the npm package, validation is skipped)."""
    with served_fake() as fake:
        yield fake
