"""JSON bodies shaped like GitHub's (the OpenAPI schemas of api.github.com), built from the fake's state."""

from __future__ import annotations

import base64
import difflib
import hashlib
from typing import Any

from github_server.state import Commit, GitHubState, Label, Pull, Repo, User, blob_sha, tree_sha

DOCS = "https://docs.github.com/rest"


class Payloads:
    def __init__(self, state: GitHubState, base_url: str) -> None:
        self.state = state
        self.api = base_url.rstrip("/")
        self.web = f"{self.api}/web"

    # --- users ---------------------------------------------------------------------------------
    def user(self, user: User | str | None) -> dict[str, Any] | None:
        if user is None:
            return None
        if isinstance(user, str):
            user = self.state.add_user(user)
        u = f"{self.api}/users/{user.login}"
        return {
            "login": user.login, "id": user.id, "node_id": f"U_{user.id}",
            "avatar_url": f"{self.web}/avatars/{user.id}", "gravatar_id": "", "url": u,
            "html_url": f"{self.web}/{user.login}", "followers_url": f"{u}/followers",
            "following_url": f"{u}/following{{/other_user}}", "gists_url": f"{u}/gists{{/gist_id}}",
            "starred_url": f"{u}/starred{{/owner}}{{/repo}}", "subscriptions_url": f"{u}/subscriptions",
            "organizations_url": f"{u}/orgs", "repos_url": f"{u}/repos", "events_url": f"{u}/events{{/privacy}}",
            "received_events_url": f"{u}/received_events", "type": user.type, "user_view_type": "public",
            "site_admin": False,
        }

    def authenticated_user(self, login: str) -> dict[str, Any]:
        user = self.state.users[login]
        body = self.user(user)
        assert body is not None
        created = "2020-01-01T00:00:00Z"
        body.update({
            "name": login, "company": None, "blog": "", "location": None, "email": None, "hireable": None,
            "bio": None, "public_repos": sum(1 for r in self.state.repos.values() if r.owner == login),
            "public_gists": 0, "followers": 0, "following": 0, "created_at": created, "updated_at": created,
        })
        return body

    # --- repositories --------------------------------------------------------------------------
    def repository(self, repo: Repo, *, full: bool = False) -> dict[str, Any]:
        r = f"{self.api}/repos/{repo.full_name}"
        pushed = self.state.now()
        body: dict[str, Any] = {
            "id": repo.id, "node_id": f"R_{repo.id}", "name": repo.name, "full_name": repo.full_name,
            "owner": self.user(repo.owner), "private": False, "html_url": f"{self.web}/{repo.full_name}",
            "description": None, "fork": False, "url": r,
            "archive_url": f"{r}/{{archive_format}}{{/ref}}", "assignees_url": f"{r}/assignees{{/user}}",
            "blobs_url": f"{r}/git/blobs{{/sha}}", "branches_url": f"{r}/branches{{/branch}}",
            "collaborators_url": f"{r}/collaborators{{/collaborator}}", "comments_url": f"{r}/comments{{/number}}",
            "commits_url": f"{r}/commits{{/sha}}", "compare_url": f"{r}/compare/{{base}}...{{head}}",
            "contents_url": f"{r}/contents/{{+path}}", "contributors_url": f"{r}/contributors",
            "deployments_url": f"{r}/deployments", "downloads_url": f"{r}/downloads", "events_url": f"{r}/events",
            "forks_url": f"{r}/forks", "git_commits_url": f"{r}/git/commits{{/sha}}",
            "git_refs_url": f"{r}/git/refs{{/sha}}", "git_tags_url": f"{r}/git/tags{{/sha}}",
            "git_url": f"git://127.0.0.1/{repo.full_name}.git", "issue_comment_url": f"{r}/issues/comments{{/number}}",
            "issue_events_url": f"{r}/issues/events{{/number}}", "issues_url": f"{r}/issues{{/number}}",
            "keys_url": f"{r}/keys{{/key_id}}", "labels_url": f"{r}/labels{{/name}}", "languages_url": f"{r}/languages",
            "merges_url": f"{r}/merges", "milestones_url": f"{r}/milestones{{/number}}",
            "notifications_url": f"{r}/notifications{{?since,all,participating}}", "pulls_url": f"{r}/pulls{{/number}}",
            "releases_url": f"{r}/releases{{/id}}", "ssh_url": f"git@127.0.0.1:{repo.full_name}.git",
            "stargazers_url": f"{r}/stargazers", "statuses_url": f"{r}/statuses/{{sha}}",
            "subscribers_url": f"{r}/subscribers", "subscription_url": f"{r}/subscription", "tags_url": f"{r}/tags",
            "teams_url": f"{r}/teams", "trees_url": f"{r}/git/trees{{/sha}}",
            "clone_url": f"{self.web}/{repo.full_name}.git", "mirror_url": None, "hooks_url": f"{r}/hooks",
            "svn_url": f"{self.web}/{repo.full_name}", "homepage": None, "language": "Python", "forks_count": 0,
            "stargazers_count": 0, "watchers_count": 0, "size": 1, "default_branch": repo.default_branch,
            "open_issues_count": sum(1 for p in repo.pulls.values() if p.state == "open"),
            "is_template": False, "topics": [], "has_issues": True, "has_projects": True, "has_wiki": True,
            "has_pages": False, "has_downloads": True, "has_discussions": False, "archived": False,
            "disabled": False, "visibility": "public", "pushed_at": pushed, "created_at": repo.created_at,
            "updated_at": pushed, "license": None, "forks": 0,
            "open_issues": sum(1 for p in repo.pulls.values() if p.state == "open"), "watchers": 0,
            "permissions": {"admin": True, "maintain": True, "push": True, "triage": True, "pull": True},
        }
        if full:
            body.update({"subscribers_count": 0, "network_count": 0, "allow_merge_commit": True,
                         "allow_squash_merge": True, "allow_rebase_merge": True, "delete_branch_on_merge": False})
        return body

    # --- git -----------------------------------------------------------------------------------
    def git_ref(self, repo: Repo, ref: str) -> dict[str, Any]:
        r = f"{self.api}/repos/{repo.full_name}"
        sha = repo.refs[ref]
        return {
            "ref": ref, "node_id": "REF_" + hashlib.sha1(f"{repo.id}:{ref}".encode()).hexdigest()[:16],
            "url": f"{r}/git/{ref}",
            "object": {"type": "commit", "sha": sha, "url": f"{r}/git/commits/{sha}"},
        }

    def _git_person(self, commit: Commit, who: str) -> dict[str, str]:
        identity = commit.author if who == "author" else commit.committer
        return {"name": identity.name, "email": identity.email, "date": commit.date}

    def commit(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        r = f"{self.api}/repos/{repo.full_name}"
        return {
            "url": f"{r}/commits/{commit.sha}", "sha": commit.sha, "node_id": f"C_{commit.sha[:16]}",
            "html_url": f"{self.web}/{repo.full_name}/commit/{commit.sha}",
            "comments_url": f"{r}/commits/{commit.sha}/comments",
            "commit": {
                "url": f"{r}/git/commits/{commit.sha}",
                "author": self._git_person(commit, "author"),
                "committer": self._git_person(commit, "committer"),
                "message": commit.message, "comment_count": 0,
                "tree": {"sha": tree_sha(commit.tree), "url": f"{r}/git/trees/{tree_sha(commit.tree)}"},
                "verification": {"verified": False, "reason": "unsigned", "signature": None, "payload": None,
                                 "verified_at": None},
            },
            # GitHub user of the git identity; the schema's "empty-object" when no account matches it.
            "author": self.user(commit.author_login) or {},
            "committer": self.user(commit.committer_login) or {},
            "parents": [
                {"sha": p, "url": f"{r}/commits/{p}", "html_url": f"{self.web}/{repo.full_name}/commit/{p}"}
                for p in commit.parents
            ],
        }

    def branch(self, repo: Repo, name: str) -> dict[str, Any]:
        r = f"{self.api}/repos/{repo.full_name}"
        sha = repo.refs[f"refs/heads/{name}"]
        return {
            "name": name, "commit": self.commit(repo, repo.commits[sha]),
            "_links": {"self": f"{r}/branches/{name}", "html": f"{self.web}/{repo.full_name}/tree/{name}"},
            "protected": False,
            "protection": {"enabled": False, "required_status_checks": {
                "enforcement_level": "off", "contexts": [], "checks": []}},
            "protection_url": f"{r}/branches/{name}/protection",
        }

    def comparison(self, repo: Repo, base: str, head: str, base_sha: str, head_sha: str) -> dict[str, Any]:
        state = self.state
        ahead = state.commits_between(repo, base_sha, head_sha)
        behind = state.commits_between(repo, head_sha, base_sha)
        merge_base = state.merge_base(repo, base_sha, head_sha) or base_sha
        status = ("identical" if base_sha == head_sha else "ahead" if not behind
                  else "behind" if not ahead else "diverged")
        r = f"{self.api}/repos/{repo.full_name}"
        w = f"{self.web}/{repo.full_name}"
        return {
            "url": f"{r}/compare/{base}...{head}", "html_url": f"{w}/compare/{base}...{head}",
            "permalink_url": f"{w}/compare/{repo.owner}:{base_sha[:7]}...{repo.owner}:{head_sha[:7]}",
            "diff_url": f"{w}/compare/{base}...{head}.diff", "patch_url": f"{w}/compare/{base}...{head}.patch",
            "base_commit": self.commit(repo, repo.commits[base_sha]),
            "merge_base_commit": self.commit(repo, repo.commits[merge_base]),
            "status": status, "ahead_by": len(ahead), "behind_by": len(behind), "total_commits": len(ahead),
            "commits": [self.commit(repo, c) for c in ahead],
        }

    # --- contents ------------------------------------------------------------------------------
    def _content_meta(self, repo: Repo, path: str, data: bytes, ref: str) -> dict[str, Any]:
        r = f"{self.api}/repos/{repo.full_name}"
        sha = blob_sha(data)
        url = f"{r}/contents/{path}?ref={ref}"
        git_url = f"{r}/git/blobs/{sha}"
        html_url = f"{self.web}/{repo.full_name}/blob/{ref}/{path}"
        return {
            "name": path.rsplit("/", 1)[-1], "path": path, "sha": sha, "size": len(data), "url": url,
            "html_url": html_url, "git_url": git_url,
            "download_url": f"{self.web}/raw/{repo.full_name}/{ref}/{path}", "type": "file",
            "_links": {"self": url, "git": git_url, "html": html_url},
        }

    def content_file(self, repo: Repo, path: str, data: bytes, ref: str) -> dict[str, Any]:
        encoded = base64.b64encode(data).decode()
        wrapped = "\n".join(encoded[i:i + 60] for i in range(0, len(encoded), 60)) + "\n"
        return {**self._content_meta(repo, path, data, ref), "content": wrapped, "encoding": "base64"}

    def file_commit(self, repo: Repo, path: str, data: bytes, branch: str, commit: Commit) -> dict[str, Any]:
        full = self.commit(repo, commit)
        return {
            "content": self._content_meta(repo, path, data, branch),
            "commit": {
                "sha": commit.sha, "node_id": full["node_id"], "url": full["commit"]["url"],
                "html_url": full["html_url"], "author": full["commit"]["author"],
                "committer": full["commit"]["committer"], "message": commit.message,
                "tree": full["commit"]["tree"], "parents": full["parents"],
                "verification": full["commit"]["verification"],
            },
        }

    # --- pulls, labels, comments ---------------------------------------------------------------
    def label(self, repo: Repo, label: Label) -> dict[str, Any]:
        return {
            "id": label.id, "node_id": f"LA_{label.id}",
            "url": f"{self.api}/repos/{repo.full_name}/labels/{label.name}", "name": label.name,
            "description": label.description, "color": label.color, "default": False,
        }

    def _pull_part(self, repo: Repo, ref: str, sha: str) -> dict[str, Any]:
        return {"label": f"{repo.owner}:{ref}", "ref": ref, "sha": sha, "user": self.user(repo.owner),
                "repo": self.repository(repo)}

    def pull(self, repo: Repo, pull: Pull, *, full: bool) -> dict[str, Any]:
        r = f"{self.api}/repos/{repo.full_name}"
        w = f"{self.web}/{repo.full_name}"
        head_sha = self.state.head_sha(repo, pull)
        base_sha = self.state.base_sha(repo, pull)
        links = {
            "self": f"{r}/pulls/{pull.number}", "html": f"{w}/pull/{pull.number}",
            "issue": f"{r}/issues/{pull.number}", "comments": f"{r}/issues/{pull.number}/comments",
            "review_comments": f"{r}/pulls/{pull.number}/comments",
            "review_comment": f"{r}/pulls/comments{{/number}}", "commits": f"{r}/pulls/{pull.number}/commits",
            "statuses": f"{r}/statuses/{head_sha}",
        }
        body: dict[str, Any] = {
            "url": links["self"], "id": pull.id, "node_id": f"PR_{pull.id}", "html_url": links["html"],
            "diff_url": f"{links['html']}.diff", "patch_url": f"{links['html']}.patch", "issue_url": links["issue"],
            "commits_url": links["commits"], "review_comments_url": links["review_comments"],
            "review_comment_url": links["review_comment"], "comments_url": links["comments"],
            "statuses_url": links["statuses"], "number": pull.number, "state": pull.state, "locked": False,
            "title": pull.title, "user": self.user(pull.user), "body": pull.body,
            "labels": [self.label(repo, repo.labels[name]) for name in pull.labels],
            "milestone": None, "active_lock_reason": None, "created_at": pull.created_at,
            "updated_at": pull.updated_at, "closed_at": pull.closed_at, "merged_at": pull.merged_at,
            "merge_commit_sha": None, "assignee": None, "assignees": [], "requested_reviewers": [],
            "requested_teams": [], "head": self._pull_part(repo, pull.head_ref, head_sha),
            "base": self._pull_part(repo, pull.base_ref, base_sha),
            "_links": {k: {"href": v} for k, v in links.items()}, "author_association": "OWNER",
            "auto_merge": None, "draft": pull.draft,
        }
        if full:
            commits = self.state.commits_between(repo, base_sha, head_sha) if head_sha and base_sha else []
            additions, deletions, changed = self._diffstat(repo, base_sha, head_sha)
            body.update({
                "merged": pull.merged_at is not None, "mergeable": True if pull.state == "open" else None,
                "rebaseable": True if pull.state == "open" else None, "mergeable_state": "clean",
                "merged_by": None, "comments": sum(1 for c in repo.comments if c.issue_number == pull.number),
                "review_comments": 0, "maintainer_can_modify": pull.maintainer_can_modify,
                "commits": len(commits), "additions": additions, "deletions": deletions, "changed_files": changed,
            })
        return body

    def _diffstat(self, repo: Repo, base_sha: str, head_sha: str) -> tuple[int, int, int]:
        if not base_sha or not head_sha:
            return 0, 0, 0
        merge_base = self.state.merge_base(repo, base_sha, head_sha) or base_sha
        old, new = repo.commits[merge_base].tree, repo.commits[head_sha].tree
        additions = deletions = changed = 0
        for path in sorted(set(old) | set(new)):
            a = old.get(path, b"").decode("utf-8", "replace").splitlines()
            b = new.get(path, b"").decode("utf-8", "replace").splitlines()
            if old.get(path) == new.get(path):
                continue
            changed += 1
            for line in difflib.unified_diff(a, b, lineterm="", n=0):
                if line.startswith("+") and not line.startswith("+++"):
                    additions += 1
                elif line.startswith("-") and not line.startswith("---"):
                    deletions += 1
        return additions, deletions, changed

    def comment(self, repo: Repo, comment: Any) -> dict[str, Any]:
        r = f"{self.api}/repos/{repo.full_name}"
        return {
            "id": comment.id, "node_id": f"IC_{comment.id}", "url": f"{r}/issues/comments/{comment.id}",
            "html_url": f"{self.web}/{repo.full_name}/pull/{comment.issue_number}#issuecomment-{comment.id}",
            "body": comment.body, "user": self.user(comment.user), "created_at": comment.created_at,
            "updated_at": comment.updated_at, "issue_url": f"{r}/issues/{comment.issue_number}",
            "author_association": "OWNER" if comment.user == repo.owner else "NONE",
        }

    # --- errors --------------------------------------------------------------------------------
    @staticmethod
    def error(status: int, message: str) -> dict[str, Any]:
        return {"message": message, "documentation_url": DOCS, "status": str(status)}

    @staticmethod
    def validation_error(message: str, resource: str, code: str = "custom", field: str | None = None) -> dict[str, Any]:
        detail: dict[str, Any] = {"resource": resource, "code": code, "message": message}
        if field:
            detail["field"] = field
        # validation-error declares no "status" (basic-error does).
        return {"message": "Validation Failed", "errors": [detail], "documentation_url": DOCS}
