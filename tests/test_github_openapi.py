"""The fake GitHub speaks GitHub's published API: every operation it implements, checked with openapi-core.

These tests need the npm package @octokit/openapi (``npm ci`` at the repository root): they fail when
CI=true and it is missing, and are skipped locally.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from github_server.app import ROUTES, FakeGitHub
from github_server.fixtures import BOT_TOKEN, REPOSITORY, fake_github, github_openapi  # noqa: F401
from github_server.openapi import GitHubOpenAPI, implemented_operations
from github_server.state import blob_sha


class Client:
    def __init__(self, fake: FakeGitHub, token: str = BOT_TOKEN) -> None:
        self.base = f"{fake.url}/repos/{REPOSITORY}"
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"token {token}", "Accept": "application/vnd.github+json"})

    def __call__(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        url = path if path.startswith("http") else f"{self.base}{path}"
        response = self.session.request(method, url, timeout=10, **kwargs)
        assert response.status_code == expect, (method, path, response.status_code, response.text[:300])
        return response.json() if response.content else None


@pytest.fixture
def traffic(fake_github: FakeGitHub, github_openapi: GitHubOpenAPI) -> Iterator[FakeGitHub]:  # noqa: F811
    """Drive every implemented operation (successes and the errors clients meet) through the fake."""
    fake = fake_github
    fake.create_repo(REPOSITORY, {"autopack/token_estimator.py": "X = 1\n", "README.md": "hi\n"})
    gh = Client(fake)
    main = gh("GET", "/git/ref/heads/main", 200)["object"]["sha"]
    gh("GET", f"{fake.url}/user", 200)
    gh("GET", "", 200)
    gh("GET", "/git/ref/heads/missing", 404)
    gh("POST", "/git/refs", 201, json={"ref": "refs/heads/feature", "sha": main})
    gh("POST", "/git/refs", 422, json={"ref": "refs/heads/feature", "sha": main})
    gh("GET", "/branches/main", 200)
    current = gh("GET", "/contents/autopack/token_estimator.py", 200, params={"ref": "feature"})
    assert base64.b64decode(current["content"]) == b"X = 1\n"
    update = {"message": "bump", "content": base64.b64encode(b"X = 2\n").decode(), "branch": "feature"}
    gh("PUT", "/contents/autopack/token_estimator.py", 422, json=update)
    gh("PUT", "/contents/autopack/token_estimator.py", 409, json={**update, "sha": blob_sha(b"stale")})
    commit = gh("PUT", "/contents/autopack/token_estimator.py", 200, json={**update, "sha": current["sha"]})
    gh("PUT", "/contents/docs/new.md", 201,
       json={"message": "add", "content": base64.b64encode(b"new\n").decode(), "branch": "feature"})
    gh("GET", "/contents/nope.txt", 404)
    gh("GET", f"/commits/{commit['commit']['sha']}", 200)
    gh("GET", "/compare/main...feature", 200)
    gh("PATCH", "/git/refs/heads/feature", 422, json={"sha": main})  # not a fast-forward
    pull = gh("POST", "/pulls", 201, json={"title": "t", "head": "feature", "base": "main", "body": "b"})
    gh("POST", "/pulls", 422, json={"title": "t", "head": "feature", "base": "main"})
    gh("POST", "/git/refs", 201, json={"ref": "refs/heads/other", "sha": commit["commit"]["sha"]})
    gh("POST", "/pulls", 201, json={"title": "second", "head": "other", "base": "main"})
    page = requests.get(f"{gh.base}/pulls", params={"per_page": 1, "head": "acme:feature", "state": "all"},
                        headers=dict(gh.session.headers), timeout=10)
    assert page.status_code == 200
    listed = requests.get(f"{gh.base}/pulls", params={"per_page": 1}, headers=dict(gh.session.headers), timeout=10)
    assert 'rel="next"' in listed.headers["Link"]
    gh("GET", f"/pulls/{pull['number']}", 200)
    gh("PATCH", f"/pulls/{pull['number']}", 200, json={"body": "new body", "title": "new title"})
    gh("GET", f"/pulls/{pull['number']}/commits", 200)
    gh("POST", f"/issues/{pull['number']}/labels", 200, json={"labels": ["calibration", "needs-review"]})
    gh("POST", f"/issues/{pull['number']}/comments", 201, json={"body": "hello"})
    gh("GET", f"/issues/{pull['number']}/comments", 200)
    gh("GET", "/pulls/999", 404)
    gh("PATCH", "/git/refs/heads/feature", 200, json={"sha": main, "force": True})
    Client(fake, token="ghp_wrong")("GET", "", 401)
    fake.rate_limit(1, "primary")
    gh("GET", "", 403)
    fake.rate_limit(1, "429")
    gh("GET", "/pulls", 429)
    yield fake


def test_every_operation_of_the_fake_is_in_githubs_description(github_openapi: GitHubOpenAPI) -> None:  # noqa: F811
    assert set(implemented_operations()) == {
        (pattern, method) for pattern, item in github_openapi.subset["paths"].items() for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }


def test_fake_traffic_matches_githubs_description(traffic: FakeGitHub, github_openapi: GitHubOpenAPI) -> None:  # noqa: F811
    assert [str(p) for p in github_openapi.check(traffic.exchanges)] == []
    served = {(e.method, e.path_pattern) for e in traffic.exchanges}
    assert served == {(method, pattern) for method, _, pattern, _ in ROUTES}  # every route was exercised


def test_force_moving_an_open_prs_head_onto_its_base_closes_it(traffic: FakeGitHub) -> None:
    repo = traffic.repo(REPOSITORY)
    assert repo.pulls[1].state == "closed"  # GitHub closes it for good; the publisher must never do this
    assert repo.pulls[2].state == "open"


def mutated(exchange: Any, change: Any) -> Any:
    body = json.loads(exchange.response_body)
    change(body)
    return dataclasses.replace(exchange, response_body=json.dumps(body).encode())


def test_validator_catches_a_missing_required_field(traffic: FakeGitHub, github_openapi: GitHubOpenAPI) -> None:  # noqa: F811
    (created,) = [e for e in traffic.requests("POST", "/repos/{owner}/{repo}/pulls") if e.status == 201][:1]
    broken = mutated(created, lambda b: b.pop("number"))
    assert any("number" in p for p in github_openapi.check_one(broken))


def test_validator_catches_an_undeclared_field(traffic: FakeGitHub, github_openapi: GitHubOpenAPI) -> None:  # noqa: F811
    (ref,) = traffic.requests("GET", "/repos/{owner}/{repo}/git/ref/{ref}")[:1]
    broken = mutated(ref, lambda b: b.update(mergable=True))
    assert github_openapi.check_one(broken)


def test_validator_catches_an_undocumented_status(traffic: FakeGitHub, github_openapi: GitHubOpenAPI) -> None:  # noqa: F811
    (repo,) = traffic.requests("GET", "/repos/{owner}/{repo}")[:1]
    assert github_openapi.check_one(dataclasses.replace(repo, status=418)) == [
        "status 418 is not documented for GET /repos/{owner}/{repo}"]


def test_validator_catches_a_request_body_off_the_spec(traffic: FakeGitHub, github_openapi: GitHubOpenAPI) -> None:  # noqa: F811
    # PyGithub's add_to_labels posts a bare list; the description documents {"labels": [...]} only.
    (labels,) = traffic.requests("POST", "/repos/{owner}/{repo}/issues/{issue_number}/labels")
    bare = dataclasses.replace(labels, request_body=json.dumps(["calibration"]).encode())
    assert any(p.startswith("request does not match") for p in github_openapi.check_one(copy.copy(bare)))


def test_deleting_an_open_prs_head_branch_closes_it_with_its_commits(
    fake_github: FakeGitHub, github_openapi: GitHubOpenAPI  # noqa: F811
) -> None:
    """As on GitHub, the closed pull request keeps the commit its branch last pointed at: its commits still list
    (the fake answered 500, having lost its head)."""
    fake_github.create_repo(REPOSITORY, {"autopack/token_estimator.py": "X = 1\n"})
    gh = Client(fake_github)
    main = gh("GET", "/git/ref/heads/main", 200)["object"]["sha"]
    gh("POST", "/git/refs", 201, json={"ref": "refs/heads/feature", "sha": main})
    current = gh("GET", "/contents/autopack/token_estimator.py", 200, params={"ref": "feature"})
    update = {"message": "bump", "content": base64.b64encode(b"X = 2\n").decode(), "branch": "feature",
              "sha": current["sha"]}
    commit = gh("PUT", "/contents/autopack/token_estimator.py", 200, json=update)["commit"]["sha"]
    pull = gh("POST", "/pulls", 201, json={"title": "t", "head": "feature", "base": "main"})["number"]
    repo = fake_github.repo(REPOSITORY)
    with fake_github.state.lock:  # a human deletes the branch
        fake_github.state.set_ref(repo, "refs/heads/feature", None)
    assert gh("GET", f"/pulls/{pull}", 200)["state"] == "closed"
    assert [c["sha"] for c in gh("GET", f"/pulls/{pull}/commits", 200)] == [commit]
    assert [str(p) for p in github_openapi.check(fake_github.exchanges)] == []
