"""The fake GitHub REST API: a WSGI app over ``GitHubState``, served on 127.0.0.1 by ``FakeGitHub``.

Each route names the OpenAPI path it implements, and every request/response pair is recorded as an
``Exchange`` so tests can validate them against GitHub's published description (see ``openapi.py``).
Knobs for tests: ``rate_limit(n, kind)`` makes the next ``n`` requests fail like GitHub's rate limiter,
and only tokens registered with ``add_token`` authenticate (anything else gets 401 Bad credentials).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from github_server.payloads import Payloads
from github_server.state import Comment, GitHubState, GitIdentity, Label, Pull, Repo, blob_sha

RATE_LIMIT = 5000
HUMAN = GitIdentity("Hannah Human", "hannah@example.com")

# (method, werkzeug rule, OpenAPI path, handler name)
ROUTES: tuple[tuple[str, str, str, str], ...] = (
    ("GET", "/user", "/user", "get_user"),
    ("GET", "/repos/<owner>/<repo>", "/repos/{owner}/{repo}", "get_repo"),
    ("GET", "/repos/<owner>/<repo>/git/ref/<path:ref>", "/repos/{owner}/{repo}/git/ref/{ref}", "get_ref"),
    ("POST", "/repos/<owner>/<repo>/git/refs", "/repos/{owner}/{repo}/git/refs", "create_ref"),
    ("PATCH", "/repos/<owner>/<repo>/git/refs/<path:ref>", "/repos/{owner}/{repo}/git/refs/{ref}", "update_ref"),
    ("GET", "/repos/<owner>/<repo>/branches/<path:branch>", "/repos/{owner}/{repo}/branches/{branch}", "get_branch"),
    ("GET", "/repos/<owner>/<repo>/contents/<path:path>", "/repos/{owner}/{repo}/contents/{path}", "get_content"),
    ("PUT", "/repos/<owner>/<repo>/contents/<path:path>", "/repos/{owner}/{repo}/contents/{path}", "put_content"),
    ("GET", "/repos/<owner>/<repo>/commits/<path:ref>", "/repos/{owner}/{repo}/commits/{ref}", "get_commit"),
    ("GET", "/repos/<owner>/<repo>/compare/<path:basehead>", "/repos/{owner}/{repo}/compare/{basehead}", "compare"),
    ("GET", "/repos/<owner>/<repo>/pulls", "/repos/{owner}/{repo}/pulls", "list_pulls"),
    ("POST", "/repos/<owner>/<repo>/pulls", "/repos/{owner}/{repo}/pulls", "create_pull"),
    ("GET", "/repos/<owner>/<repo>/pulls/<int:number>", "/repos/{owner}/{repo}/pulls/{pull_number}", "get_pull"),
    ("PATCH", "/repos/<owner>/<repo>/pulls/<int:number>", "/repos/{owner}/{repo}/pulls/{pull_number}", "update_pull"),
    ("GET", "/repos/<owner>/<repo>/pulls/<int:number>/commits", "/repos/{owner}/{repo}/pulls/{pull_number}/commits",
     "list_pull_commits"),
    ("POST", "/repos/<owner>/<repo>/issues/<int:number>/labels",
     "/repos/{owner}/{repo}/issues/{issue_number}/labels", "add_labels"),
    ("GET", "/repos/<owner>/<repo>/issues/<int:number>/comments",
     "/repos/{owner}/{repo}/issues/{issue_number}/comments", "list_comments"),
    ("POST", "/repos/<owner>/<repo>/issues/<int:number>/comments",
     "/repos/{owner}/{repo}/issues/{issue_number}/comments", "create_comment"),
)


@dataclass
class Exchange:
    """One request and the fake's response, as recorded for OpenAPI validation."""

    method: str
    path: str
    path_pattern: str | None
    path_params: dict[str, str]
    query: list[tuple[str, str]]
    request_headers: dict[str, str]
    request_body: bytes
    status: int
    response_headers: dict[str, str]
    response_body: bytes

    def json(self) -> Any:
        return json.loads(self.response_body) if self.response_body else None


class HttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status, self.body = status, body


@dataclass
class FakeGitHub:
    """A stateful GitHub REST fake. ``start()`` serves it on 127.0.0.1; ``url`` is its API base URL."""

    state: GitHubState = field(default_factory=GitHubState)
    #: Serve under a path prefix, as GitHub Enterprise Server does ("/api/v3").
    prefix: str = ""
    exchanges: list[Exchange] = field(default_factory=list)
    url: str = ""
    _pending_limits: list[str] = field(default_factory=list)
    _faults: list[str] = field(default_factory=list)
    _remaining: int = RATE_LIMIT
    _request_ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _server: Any = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._map = Map(
            [Rule(rule, methods=[method], endpoint=(handler, pattern)) for method, rule, pattern, handler in ROUTES],
            strict_slashes=False,
        )

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FakeGitHub:
        self._server = make_server("127.0.0.1", 0, self, threaded=True, request_handler=_QuietHandler)
        self.url = f"http://127.0.0.1:{self._server.server_port}{self.prefix}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-github", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- test knobs (what a human or GitHub itself would do) -----------------------------------
    def add_token(self, token: str, login: str, *, read_only: bool = False) -> None:
        """Register a token; a read-only one gets 403 on every write, like a token lacking a permission."""
        self.state.add_token(token, login, read_only=read_only)

    def create_repo(self, full_name: str, files: dict[str, str | bytes], *, default_branch: str = "main") -> Repo:
        return self.state.create_repo(full_name, files, default_branch=default_branch)

    def repo(self, full_name: str) -> Repo:
        owner, name = full_name.split("/")
        repo = self.state.repo(owner, name)
        assert repo is not None, full_name
        return repo

    def push(self, full_name: str, branch: str, files: dict[str, str | None], message: str,
             author: GitIdentity = HUMAN) -> str:
        """A human commit pushed to ``branch`` (as ``git push`` would)."""
        with self.state.lock:
            self.state.add_user(author.email.split("@")[0])
            return self.state.commit_to_branch(
                self.repo(full_name), branch,
                {p: (c.encode() if isinstance(c, str) else None) for p, c in files.items()}, message, author,
            )

    def close_pull(self, full_name: str, number: int) -> None:
        """A human closes the PR without merging it (the branch stays)."""
        with self.state.lock:
            self.state.close_pull(self.repo(full_name), number)

    def merge_pull(self, full_name: str, number: int) -> str:
        """A human merges the PR (a merge commit on the base with the head's tree); returns the merge commit."""
        with self.state.lock:
            return self.state.merge_pull(self.repo(full_name), number, HUMAN)

    def reopen_pull(self, full_name: str, number: int) -> None:
        with self.state.lock:
            pull = self.repo(full_name).pulls[number]
            pull.state, pull.closed_at, pull.frozen_head_sha, pull.frozen_base_sha = "open", None, None, None

    def file(self, full_name: str, rev: str, path: str) -> str | None:
        with self.state.lock:
            repo = self.repo(full_name)
            sha = self.state.resolve(repo, rev)
            data = repo.commits[sha].tree.get(path) if sha else None
            return data.decode() if data is not None else None

    def rate_limit(self, count: int, kind: str = "primary") -> None:
        """The next ``count`` requests are refused: ``primary`` (403, remaining 0), ``secondary`` (403,
        retry-after) or ``429`` (429, retry-after)."""
        assert kind in ("primary", "secondary", "429")
        self._pending_limits.extend([kind] * count)

    def fail_next(self, handler: str) -> None:
        """The next request served by ``handler`` (``create_pull``, ``update_pull``, …) is refused with 422, a
        status GitHub documents for those writes: a failure after the bot branch already moved."""
        self._faults.append(handler)

    def requests(self, method: str | None = None, pattern: str | None = None) -> list[Exchange]:
        return [e for e in self.exchanges
                if (method is None or e.method == method) and (pattern is None or e.path_pattern == pattern)]

    # --- WSGI ----------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if self.prefix:
            environ["PATH_INFO"] = path[len(self.prefix):] if path.startswith(self.prefix + "/") else "/-unknown-"
        request = Request(environ)
        request_body = request.get_data(cache=True)
        pattern: str | None = None
        params: dict[str, str] = {}
        with self.state.lock:
            try:
                (handler, pattern), raw_params = self._map.bind_to_environ(environ).match()
                params = self._openapi_params(pattern, raw_params)
                status, body, *extra = self._handle(request, handler, raw_params)
                headers = self._headers(extra=extra[0] if extra else None)
            except HttpError as exc:
                status, body, headers = exc.status, exc.body, self._headers()
            except (NotFound, MethodNotAllowed):
                status, body, headers = 404, Payloads.error(404, "Not Found"), self._headers()
            except _RateLimited as limited:
                status, body, headers = limited.status, limited.body, limited.headers
            payload = b"" if body is None else json.dumps(body).encode()
            response = Response(payload, status=status, headers=headers)
            self.exchanges.append(Exchange(
                method=request.method, path=request.path, path_pattern=pattern, path_params=params,
                query=list(request.args.items(multi=True)), request_headers=dict(request.headers),
                request_body=request_body, status=status, response_headers=dict(response.headers),
                response_body=payload,
            ))
        return response(environ, start_response)

    def _openapi_params(self, pattern: str, raw: dict[str, Any]) -> dict[str, str]:
        params = {}
        for name, value in raw.items():
            if name == "number":
                name = "pull_number" if "{pull_number}" in pattern else "issue_number"
            params[name] = str(value)
        return params

    def _headers(self, remaining: int | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
        if remaining is None:
            self._remaining = max(self._remaining - 1, 1)
            remaining = self._remaining
        reset = 1_900_000_000
        return {
            "Content-Type": "application/json; charset=utf-8",
            "X-RateLimit-Limit": str(RATE_LIMIT), "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(reset), "X-RateLimit-Used": str(RATE_LIMIT - remaining),
            "X-RateLimit-Resource": "core", "X-GitHub-Api-Version-Selected": "2022-11-28",
            "X-GitHub-Request-Id": f"FAKE:{next(self._request_ids)}", **(extra or {}),
        }

    def _handle(self, request: Request, handler: str, params: dict[str, Any]) -> tuple[Any, ...]:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if not auth:
            raise HttpError(401, Payloads.error(401, "Requires authentication"))
        login = self.state.tokens.get(token) if scheme.lower() in ("token", "bearer") else None
        if login is None:
            raise HttpError(401, Payloads.error(401, "Bad credentials"))
        if self._pending_limits:
            raise self._limited(self._pending_limits.pop(0))
        if handler in self._faults:
            self._faults.remove(handler)
            raise HttpError(422, Payloads.validation_error("the fake refused it, as a test asked", "PullRequest"))
        if request.method != "GET" and token in self.state.read_only_tokens:
            raise HttpError(403, Payloads.error(403, "Resource not accessible by personal access token"))
        handlers = _Handlers(self, request, login)
        return getattr(handlers, handler)(**params)

    def _limited(self, kind: str) -> _RateLimited:
        if kind == "primary":
            body = Payloads.error(403, "API rate limit exceeded for user ID 1. If you reach out to GitHub Support "
                                       "for help, please include the request ID FAKE.")
            # The reset is a fixed epoch the tests' injected clock knows; nothing really waits for it.
            return _RateLimited(403, body, self._headers(0, {"X-RateLimit-Reset": "1900000002"}))
        message = ("You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
                   "If you reach out to GitHub Support for help, please include the request ID FAKE.")
        status = 403 if kind == "secondary" else 429
        return _RateLimited(status, Payloads.error(status, message), self._headers(None, {"Retry-After": "3"}))


class _RateLimited(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # noqa: D102 - silence per-request logging
        pass


class _Handlers:
    """One request's handlers; each returns (status, JSON body) or raises ``HttpError``."""

    def __init__(self, fake: FakeGitHub, request: Request, login: str) -> None:
        self.fake, self.request, self.login = fake, request, login
        self.state = fake.state
        self.p = Payloads(fake.state, fake.url)

    # --- helpers -------------------------------------------------------------------------------
    def _repo(self, owner: str, repo: str) -> Repo:
        found = self.state.repo(owner, repo)
        if found is None:
            raise HttpError(404, Payloads.error(404, "Not Found"))
        return found

    def _json(self) -> Any:
        try:
            return json.loads(self.request.get_data() or b"null")
        except json.JSONDecodeError:
            raise HttpError(400, Payloads.error(400, "Problems parsing JSON")) from None

    def _identity(self, value: Any) -> GitIdentity | None:
        if isinstance(value, dict) and value.get("name") and value.get("email"):
            return GitIdentity(str(value["name"]), str(value["email"]))
        return None

    # --- users and repositories ----------------------------------------------------------------
    def get_user(self) -> tuple[int, Any]:
        return 200, self.p.authenticated_user(self.login)

    def get_repo(self, owner: str, repo: str) -> tuple[int, Any]:
        return 200, self.p.repository(self._repo(owner, repo), full=True)

    # --- refs and branches ---------------------------------------------------------------------
    def get_ref(self, owner: str, repo: str, ref: str) -> tuple[int, Any]:
        r = self._repo(owner, repo)
        full = f"refs/{ref}"
        if full not in r.refs:
            raise HttpError(404, Payloads.error(404, "Not Found"))
        return 200, self.p.git_ref(r, full)

    def create_ref(self, owner: str, repo: str) -> tuple[int, Any]:
        r = self._repo(owner, repo)
        data = self._json() or {}
        ref, sha = data.get("ref"), data.get("sha")
        if not isinstance(ref, str) or not ref.startswith("refs/") or ref.count("/") < 2:
            raise HttpError(422, Payloads.validation_error(
                "Reference name must start with 'refs/' and have at least two slashes.", "Reference", field="ref"))
        if sha not in r.commits:
            raise HttpError(422, Payloads.validation_error("Object does not exist", "Reference", field="sha"))
        if ref in r.refs:
            raise HttpError(422, Payloads.validation_error("Reference already exists", "Reference", field="ref"))
        self.state.set_ref(r, ref, sha)
        return 201, self.p.git_ref(r, ref)

    def update_ref(self, owner: str, repo: str, ref: str) -> tuple[int, Any]:
        r = self._repo(owner, repo)
        data = self._json() or {}
        full, sha, force = f"refs/{ref}", data.get("sha"), bool(data.get("force"))
        if full not in r.refs:
            raise HttpError(422, Payloads.validation_error("Reference does not exist", "Reference", field="ref"))
        if sha not in r.commits:
            raise HttpError(422, Payloads.validation_error("Object does not exist", "Reference", field="sha"))
        if not force and r.refs[full] not in self.state.ancestors(r, sha):
            raise HttpError(422, Payloads.validation_error("Update is not a fast forward", "Reference", field="sha"))
        self.state.set_ref(r, full, sha)
        return 200, self.p.git_ref(r, full)

    def get_branch(self, owner: str, repo: str, branch: str) -> tuple[int, Any]:
        r = self._repo(owner, repo)
        if f"refs/heads/{branch}" not in r.refs:
            raise HttpError(404, Payloads.error(404, "Branch not found"))
        return 200, self.p.branch(r, branch)

    # --- contents and commits ------------------------------------------------------------------
    def get_content(self, owner: str, repo: str, path: str) -> tuple[int, Any]:
        r = self._repo(owner, repo)
        ref = self.request.args.get("ref") or r.default_branch
        sha = self.state.resolve(r, ref)
        if sha is None:
            raise HttpError(404, Payloads.error(404, f"No commit found for the ref {ref}"))
        data = r.commits[sha].tree.get(path)
        if data is None:
            raise HttpError(404, Payloads.error(404, "Not Found"))
        return 200, self.p.content_file(r, path, data, ref)

    def put_content(self, owner: str, repo: str, path: str) -> tuple[int, Any]:
        r = self._repo(owner, repo)
        data = self._json() or {}
        message, content = data.get("message"), data.get("content")
        if not isinstance(message, str) or not isinstance(content, str):
            raise HttpError(422, Payloads.validation_error("message and content are required", "Contents"))
        try:
            raw = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise HttpError(422, Payloads.validation_error("content is not valid Base64", "Contents")) from None
        branch = data.get("branch") or r.default_branch
        ref = f"refs/heads/{branch}"
        if ref not in r.refs:
            raise HttpError(404, Payloads.error(404, f"Branch {branch} not found"))
        current = r.commits[r.refs[ref]].tree.get(path)
        if current is not None and "sha" not in data:
            raise HttpError(422, Payloads.validation_error('"sha" wasn\'t supplied.', "Contents", field="sha"))
        if current is not None and data["sha"] != blob_sha(current):
            # The 409 is "basic-error or repository-rule-violation-error" (oneOf): "url" is what only the
            # first declares, so the body matches exactly one of them.
            conflict = Payloads.error(409, f"{path} does not match {data['sha']}")
            raise HttpError(409, {**conflict, "url": f"{self.fake.url}{self.request.path}"})
        user = self.state.users[self.login]
        default = GitIdentity(self.login, user.noreply_email)
        committer = self._identity(data.get("committer")) or default
        author = self._identity(data.get("author")) or committer
        sha = self.state.commit_to_branch(r, branch, {path: raw}, message, author, committer)
        return (200 if current is not None else 201), self.p.file_commit(r, path, raw, branch, r.commits[sha])

    def get_commit(self, owner: str, repo: str, ref: str) -> tuple[int, Any]:
        r = self._repo(owner, repo)
        sha = self.state.resolve(r, ref)
        if sha is None:
            raise HttpError(404, Payloads.error(404, f"No commit found for SHA: {ref}"))
        return 200, self.p.commit(r, r.commits[sha])

    def compare(self, owner: str, repo: str, basehead: str) -> tuple[int, Any]:
        r = self._repo(owner, repo)
        base, sep, head = basehead.partition("...")
        base_sha, head_sha = self.state.resolve(r, base), self.state.resolve(r, head)
        if not sep or base_sha is None or head_sha is None:
            raise HttpError(404, Payloads.error(404, "Not Found"))
        return 200, self.p.comparison(r, base, head, base_sha, head_sha)

    # --- pulls ---------------------------------------------------------------------------------
    def _pull(self, r: Repo, number: int) -> Pull:
        if number not in r.pulls:
            raise HttpError(404, Payloads.error(404, "Not Found"))
        return r.pulls[number]

    def list_pulls(self, owner: str, repo: str) -> tuple[Any, ...]:
        r = self._repo(owner, repo)
        args = self.request.args
        state = args.get("state", "open")
        if state not in ("open", "closed", "all"):
            raise HttpError(422, Payloads.validation_error("state is not valid", "PullRequest", field="state"))
        pulls = sorted(r.pulls.values(), key=lambda p: -p.number)
        if state != "all":
            pulls = [p for p in pulls if p.state == state]
        if head := args.get("head"):
            user, _, branch = head.partition(":")
            pulls = [p for p in pulls if branch and user == r.owner and p.head_ref == branch]
        if base := args.get("base"):
            pulls = [p for p in pulls if p.base_ref == base]
        per_page = min(max(int(args.get("per_page", 30)), 1), 100)
        page = max(int(args.get("page", 1)), 1)
        last = max((len(pulls) + per_page - 1) // per_page, 1)
        chunk = pulls[(page - 1) * per_page: page * per_page]
        links = []
        base_query = {k: v for k, v in args.items() if k not in ("page", "per_page")}
        for rel, target in (("next", page + 1), ("last", last)):
            if page < last:
                links.append(f'<{self.fake.url}{self.request.path}?'
                             f'{urlencode({**base_query, "per_page": per_page, "page": target})}>; rel="{rel}"')
        body = [self.p.pull(r, p, full=False) for p in chunk]
        return (200, body, {"Link": ", ".join(links)}) if links else (200, body)

    def create_pull(self, owner: str, repo: str) -> tuple[int, Any]:
        r = self._repo(owner, repo)
        data = self._json() or {}
        title, head, base = data.get("title"), data.get("head"), data.get("base")
        if not isinstance(head, str) or not isinstance(base, str) or not (title or data.get("issue")):
            raise HttpError(422, Payloads.validation_error("title, head and base are required", "PullRequest"))
        head_owner, _, head_branch = head.rpartition(":")
        if head_owner not in ("", r.owner) or f"refs/heads/{head_branch}" not in r.refs:
            raise HttpError(422, Payloads.validation_error("head invalid", "PullRequest", "invalid", "head"))
        if f"refs/heads/{base}" not in r.refs:
            raise HttpError(422, Payloads.validation_error("base invalid", "PullRequest", "invalid", "base"))
        for p in r.pulls.values():
            if p.state == "open" and p.head_ref == head_branch and p.base_ref == base:
                raise HttpError(422, Payloads.validation_error(
                    f"A pull request already exists for {r.owner}:{head_branch}.", "PullRequest"))
        if not self.state.commits_between(r, r.refs[f"refs/heads/{base}"], r.refs[f"refs/heads/{head_branch}"]):
            raise HttpError(422, Payloads.validation_error(
                f"No commits between {base} and {head_branch}", "PullRequest"))
        number = r.next_issue
        r.next_issue += 1
        now = self.state.now()
        r.pulls[number] = Pull(number, self.state.new_id(), str(title), data.get("body"), head_branch, base,
                               self.login, now, now, draft=bool(data.get("draft")),
                               maintainer_can_modify=bool(data.get("maintainer_can_modify")))
        return 201, self.p.pull(r, r.pulls[number], full=True)

    def get_pull(self, owner: str, repo: str, number: int) -> tuple[int, Any]:
        r = self._repo(owner, repo)
        return 200, self.p.pull(r, self._pull(r, number), full=True)

    def update_pull(self, owner: str, repo: str, number: int) -> tuple[int, Any]:
        r = self._repo(owner, repo)
        pull = self._pull(r, number)
        data = self._json() or {}
        if "title" in data:
            pull.title = str(data["title"])
        if "body" in data:
            pull.body = data["body"]
        if data.get("state") == "closed" and pull.state == "open":
            self.state.close_pull(r, number)
        elif data.get("state") == "open" and pull.state == "closed":
            head = r.refs.get(f"refs/heads/{pull.head_ref}")
            if head is None or head == r.refs.get(f"refs/heads/{pull.base_ref}"):
                raise HttpError(422, Payloads.validation_error("state cannot be changed.", "PullRequest"))
            pull.state, pull.closed_at, pull.frozen_head_sha = "open", None, None
        pull.updated_at = self.state.now()
        return 200, self.p.pull(r, pull, full=True)

    def list_pull_commits(self, owner: str, repo: str, number: int) -> tuple[int, Any]:
        r = self._repo(owner, repo)
        pull = self._pull(r, number)
        commits = self.state.commits_between(r, self.state.base_sha(r, pull), self.state.head_sha(r, pull))
        return 200, [self.p.commit(r, c) for c in commits]

    # --- issues: labels and comments -----------------------------------------------------------
    def add_labels(self, owner: str, repo: str, number: int) -> tuple[int, Any]:
        r = self._repo(owner, repo)
        pull = self._pull(r, number)
        data = self._json()
        names = data.get("labels") if isinstance(data, dict) else data
        if not isinstance(names, list) or not names:
            raise HttpError(422, Payloads.validation_error("labels must be a non-empty list", "Label"))
        for item in names:
            name = item.get("name") if isinstance(item, dict) else item
            if not isinstance(name, str) or not name:
                raise HttpError(422, Payloads.validation_error("label names must be strings", "Label"))
            if name not in r.labels:
                r.labels[name] = Label(self.state.new_id(), name)
            if name not in pull.labels:
                pull.labels.append(name)
        return 200, [self.p.label(r, r.labels[name]) for name in pull.labels]

    def list_comments(self, owner: str, repo: str, number: int) -> tuple[int, Any]:
        r = self._repo(owner, repo)
        self._pull(r, number)
        return 200, [self.p.comment(r, c) for c in r.comments if c.issue_number == number]

    def create_comment(self, owner: str, repo: str, number: int) -> tuple[int, Any]:
        r = self._repo(owner, repo)
        self._pull(r, number)
        data = self._json() or {}
        if not isinstance(data.get("body"), str) or not data["body"]:
            raise HttpError(422, Payloads.validation_error("body is required", "IssueComment", "missing_field", "body"))
        now = self.state.now()
        comment = Comment(self.state.new_id(), number, data["body"], self.login, now, now)
        r.comments.append(comment)
        return 201, self.p.comment(r, comment)

