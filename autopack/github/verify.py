"""Check an edited ``token_estimator.py`` in a throw-away copy of the target repository before publishing.

Three checks, each in a fresh interpreter so nothing cached in this process can hide a broken file:
(a) the edited module imports and every proposed table value reads back as proposed; (b) the
repository's own estimator tests pass against it; (c) for each changed (category, complexity) group,
the ceiling a representative phase gets before and after (only when the module offers ``plan_call``
and ``PhaseFeatures``; otherwise the report carries the table values alone).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from autopack.github.errors import VerificationError
from autopack.github.proposal import ESTIMATOR_PATH, Change, Number, parse_changes
from autopack.logging import redact

#: Tables keyed by (category, complexity): a change in one of them moves that group's ceiling.
GROUP_TABLES = frozenset({"PHASE_OVERHEAD", "BUDGET_FACTORS", "BASE_BUDGET_BY_CATEGORY"})
ESTIMATOR_TESTS = "tests/test_token_estimator.py"
_PROBE_PREFIX = "AUTOPACK_ESTIMATOR_PROBE "
MAX_OUTPUT_CHARS = 20_000
MAX_VALUE_CHARS = 120
_COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "node_modules", "__pycache__", ".pytest_cache", ".mypy_cache", ".autopack", "*.db"
)
_SECRET_ENV = ("GITHUB_TOKEN", "GH_TOKEN", "AUTOPACK_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY",
               "GOOGLE_API_KEY")

# Runs in the fresh interpreter: reads a request on stdin, prints one prefixed JSON line.
_PROBE = r"""
import importlib, json, sys
req = json.load(sys.stdin)
out = {"file": None, "values": [], "estimates": [], "error": None, "has_planner": False}
try:
    mod = importlib.import_module(req["module"])
    out["file"] = getattr(mod, "__file__", None)
    for table, key in req["entries"]:
        t = getattr(mod, table, None)
        v = t.get(tuple(key)) if isinstance(t, dict) else None
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        out["values"].append([table, key, v if ok else None, type(v).__name__, isinstance(t, dict)])
    plan, features = getattr(mod, "plan_call", None), getattr(mod, "PhaseFeatures", None)
    if callable(plan) and features is not None:
        out["has_planner"] = True
        for category, complexity, deliverable in req["phases"]:
            est, decision = plan(features(category=category, complexity=complexity, deliverables=(deliverable,)))
            out["estimates"].append({
                "category": category, "complexity": complexity, "deliverable": deliverable,
                "estimated_group": list(getattr(est, "group", (None, None))),
                "predicted": getattr(est, "predicted_output_tokens", None),
                "selected_budget": getattr(decision, "selected_budget", None),
                "actual_max_tokens": getattr(decision, "actual_max_tokens", None),
            })
except BaseException as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(__PREFIX__ + json.dumps(out))
""".replace("__PREFIX__", repr(_PROBE_PREFIX))


@dataclass(frozen=True)
class TableCheck:
    """One proposed entry as the edited module reports it."""

    coefficient: str
    key: tuple[str, str]
    old: Number | None
    expected: Number
    actual: Number | None
    ok: bool


@dataclass(frozen=True)
class PhaseNumbers:
    """One phase's numbers as an estimator module computes them (None: it did not say)."""

    predicted: Number | None = None
    selected_budget: Number | None = None
    actual_max_tokens: Number | None = None


@dataclass(frozen=True)
class EstimateComparison:
    """A representative phase of a changed group: its numbers with the current and the edited coefficients."""

    category: str
    complexity: str
    deliverable: str
    estimated_group: tuple[str, str]
    old: PhaseNumbers | None
    new: PhaseNumbers


@dataclass(frozen=True, kw_only=True)
class _ProbeEstimate(PhaseNumbers):
    """One representative phase as the probe printed it (``_PROBE``): its numbers, and which phase it is."""

    category: str
    complexity: str
    deliverable: str
    estimated_group: tuple[str | None, str | None] = (None, None)

    def numbers(self) -> PhaseNumbers:
        return PhaseNumbers(self.predicted, self.selected_budget, self.actual_max_tokens)


@dataclass(frozen=True)
class _Probe:
    """What the probe printed (``_PROBE``): the estimator module as a fresh interpreter imported it. Parsed and
    checked on arrival (``_PROBE_OUTPUT``): the module is the target repository's code, its output untrusted."""

    file: str | None = None
    #: per requested entry: (table, key, its numeric value or None, the value's type name, the table is a dict)
    values: tuple[tuple[str, tuple[str, ...], Number | None, str, bool], ...] = ()
    estimates: tuple[_ProbeEstimate, ...] = ()
    error: str | None = None
    has_planner: bool = False


_PROBE_OUTPUT = TypeAdapter(_Probe)


@dataclass(frozen=True)
class TestFailure:
    """One failing estimator test as pytest reported it (from its JUnit XML), secrets redacted."""

    __test__ = False  # not a pytest test class

    #: pytest node id, e.g. ``tests/test_token_estimator.py::test_tables_are_positive``
    test_id: str
    #: The assertion (or exception) in one line, e.g. ``assert (True and 0 > 0)``
    assertion: str
    #: The failing frame's local variables as pytest printed them (``-l``), e.g. ``(("value", "0"),)``
    values: tuple[tuple[str, str], ...] = ()
    #: pytest's full report of this failure (traceback with locals), capped
    details: str = ""

    def one_line(self) -> str:
        shown = ", ".join(f"{name} = {value}" for name, value in self.values if len(value) <= 60)
        return f"{self.test_id} failed: {self.assertion}" + (f" ({shown})" if shown else "")


@dataclass(frozen=True)
class EstimatorTestRun:
    status: Literal["passed", "failed", "not_found", "skipped"]
    command: str
    returncode: int | None = None
    output_tail: str = ""
    #: Every failing test, in the order pytest ran them (empty when pytest could not report them).
    failures: tuple[TestFailure, ...] = ()
    #: pytest's whole output (redacted, capped at ``MAX_OUTPUT_CHARS``), for the report/artifact.
    output: str = ""


@dataclass(frozen=True)
class VerificationReport:
    """What was checked and what failed; ``ok`` is False when anything that must hold did not."""

    ok: bool
    module_file: str | None
    table_checks: tuple[TableCheck, ...]
    estimates: tuple[EstimateComparison, ...]
    tests: EstimatorTestRun
    errors: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def failure_summary(self) -> str:
        return "; ".join(self.errors) if self.errors else "no failure"

    def raise_for_failure(self) -> None:
        """Raise ``VerificationError`` (one line, nothing published) unless every check passed."""
        if not self.ok:
            raise VerificationError(
                f"edited token_estimator.py failed verification: {self.failure_summary()}",
                hint="nothing was published",
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def representative_deliverable(category: str) -> str:
    """One new deliverable that a phase of ``category`` typically names (for the before/after comparison)."""
    c = category.strip().lower()
    if c == "doc_sot_update":
        return "docs/changelog.md"
    if c == "doc_synthesis":
        return "docs/api_reference.md"
    if c in ("docs", "documentation", "doc"):
        return "docs/guide.md"
    if c in ("tests", "testing"):
        return "tests/test_module.py"
    if c == "frontend":
        return "src/App.tsx"
    if c == "configuration":
        return "config/settings.yaml"
    if c == "database":
        return "db/schema.sql"
    return "src/module.py"


def changed_groups(changes: Sequence[Change]) -> list[tuple[str, str]]:
    """(category, complexity) groups whose ceiling the changes can move, in first-seen order."""
    groups: list[tuple[str, str]] = []
    for change in changes:
        group = change.group or (change.key if change.coefficient in GROUP_TABLES else None)
        if group is not None and group not in groups:
            groups.append(group)
    return groups


def verify_edited_estimator(
    repo_dir: Path,
    edited_source: str,
    changes: Sequence[Mapping[str, Any] | Change],
    *,
    original_source: str | None = None,
    estimator_path: str = ESTIMATOR_PATH,
    ref: str | None = "HEAD",
    run_tests: bool = True,
    tests_path: str = ESTIMATOR_TESTS,
    python: str | None = None,
    timeout: float = 900.0,
) -> VerificationReport:
    """Verify ``edited_source`` inside a temporary copy of ``repo_dir`` (the repository itself is not touched).

    The copy is ``git archive <ref>`` of the repository (what the pull request's base holds), or a copy
    of the working tree when ``ref`` is None or ``repo_dir`` is not a git checkout. ``original_source``
    (default: the copy's own file) gives the "before" numbers. ``python`` is the interpreter with the
    target's dependencies (default: this one). Returns a report; call ``raise_for_failure()`` to stop.
    """
    parsed = parse_changes(changes)
    python = python or sys.executable
    module = estimator_path.removesuffix(".py").replace("/", ".")
    entries = [[c.coefficient, list(c.key)] for c in parsed]
    phases = [[cat, cx, representative_deliverable(cat)] for cat, cx in changed_groups(parsed)]
    request = {"module": module, "entries": entries, "phases": phases}
    errors: list[str] = []
    notes: list[str] = []

    with tempfile.TemporaryDirectory(prefix="autopack-verify-") as tmp:
        copy = Path(tmp) / "repo"
        _materialise(Path(repo_dir), copy, ref)
        target = copy / estimator_path
        target.parent.mkdir(parents=True, exist_ok=True)
        env = _subprocess_env(copy)

        before = original_source
        if before is None and target.exists():
            before = target.read_text("utf-8")
        old_probe: _Probe | None = None
        if before is not None:
            target.write_text(before, encoding="utf-8")
            old_probe = _run_probe(python, copy, env, request, timeout)
            if old_probe.error:
                notes.append(f"the current estimator did not import: {old_probe.error}")
                old_probe = None

        target.write_text(edited_source, encoding="utf-8")
        new_probe = _run_probe(python, copy, env, request, timeout)
        module_file = new_probe.file
        if new_probe.error:
            errors.append(f"importing the edited module failed: {new_probe.error}")
        elif not module_file or not Path(module_file).resolve().is_relative_to(copy.resolve()):
            errors.append(f"{module} was imported from {module_file}, not from the verification copy")

        checks = _table_checks(parsed, new_probe)
        errors.extend(
            f"{c.coefficient}[{c.key[0]!r}, {c.key[1]!r}] reads back as {c.actual}, expected {c.expected}"
            for c in checks if not c.ok
        )
        estimates = _comparisons(old_probe, new_probe)
        if phases and not new_probe.has_planner and not new_probe.error:
            notes.append("the estimator has no plan_call/PhaseFeatures: only table values are compared")

        tests = (_run_tests(python, copy, env, tests_path, timeout, Path(tmp) / "junit.xml") if run_tests
                 else EstimatorTestRun("skipped", ""))
        if tests.status == "failed":
            errors.append(_tests_failed(tests, tests_path))
        elif tests.status == "not_found":
            notes.append(f"{tests_path} does not exist in the target repository; no estimator tests were run")

    return VerificationReport(
        ok=not errors,
        module_file=module_file,
        table_checks=tuple(checks),
        estimates=tuple(estimates),
        tests=tests,
        errors=tuple(errors),
        notes=tuple(notes),
    )


def _materialise(repo_dir: Path, dest: Path, ref: str | None) -> None:
    if not repo_dir.is_dir():
        raise VerificationError(f"target repository {repo_dir} is not a directory")
    if ref is not None and _is_git_checkout(repo_dir):
        archive = subprocess.run(
            ["git", "-C", str(repo_dir), "archive", "--format=tar", ref], capture_output=True, check=False
        )
        if archive.returncode != 0:
            raise VerificationError(
                f"git archive {ref} failed in {repo_dir}: {archive.stderr.decode(errors='replace').strip()}"
            )
        dest.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(dest, filter="data")
        return
    shutil.copytree(repo_dir, dest, ignore=_COPY_IGNORE, symlinks=True)


def _is_git_checkout(path: Path) -> bool:
    probe = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=False
    )
    return probe.returncode == 0 and Path(probe.stdout.strip()).resolve() == path.resolve()


def _subprocess_env(copy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run_probe(
    python: str, copy: Path, env: Mapping[str, str], request: Mapping[str, Any], timeout: float
) -> _Probe:
    try:
        done = subprocess.run(
            [python, "-c", _PROBE], input=json.dumps(request), capture_output=True, text=True,
            cwd=copy, env=dict(env), timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        return _Probe(error=f"the import probe timed out after {timeout:.0f}s")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_PROBE_PREFIX):
            try:
                return _PROBE_OUTPUT.validate_json(line[len(_PROBE_PREFIX):])
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "its output"
                return _Probe(error=f"the import probe printed output it should not ({where}: {redact(first['msg'])})")
    lines = (done.stderr or done.stdout).strip().splitlines()
    tail = redact(lines[-1]) if lines else ""
    return _Probe(error=f"the import probe exited {done.returncode}: {tail}")


def _table_checks(changes: Sequence[Change], probe: _Probe) -> list[TableCheck]:
    values = {(table, key): value for table, key, value, *_ in probe.values}
    checks = []
    for change in changes:
        actual = values.get((change.coefficient, change.key))
        ok = actual is not None and math.isclose(actual, change.new, rel_tol=1e-9, abs_tol=1e-12)
        checks.append(TableCheck(change.coefficient, change.key, change.old, change.new, actual, ok))
    return checks


def _comparisons(old: _Probe | None, new: _Probe) -> list[EstimateComparison]:
    before = {(e.category, e.complexity): e for e in (old.estimates if old is not None else ())}
    out = []
    for e in new.estimates:
        prior = before.get((e.category, e.complexity))
        # an estimator that does not name a group's part is read as the phase's own category or complexity
        group = (e.estimated_group[0] or e.category, e.estimated_group[1] or e.complexity)
        out.append(
            EstimateComparison(
                category=e.category,
                complexity=e.complexity,
                deliverable=e.deliverable,
                estimated_group=group,
                old=prior.numbers() if prior else None,
                new=e.numbers(),
            )
        )
    return out


def _run_tests(python: str, copy: Path, env: Mapping[str, str], tests_path: str, timeout: float,
               junit: Path) -> EstimatorTestRun:
    # -l prints each failing frame's locals: the value that broke an invariant, named in the error.
    command = [python, "-m", "pytest", "-q", "-l", "-p", "no:cacheprovider", tests_path]
    shown = " ".join(["python", *command[1:]])
    if not (copy / tests_path).is_file():
        return EstimatorTestRun("not_found", shown)
    report_args = [f"--junitxml={junit}", "-o", "junit_family=xunit1"]
    try:
        done = subprocess.run(
            [*command, *report_args], cwd=copy, env=dict(env), capture_output=True, text=True, timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return EstimatorTestRun("failed", shown, None, f"timed out after {timeout:.0f}s",
                                output=f"timed out after {timeout:.0f}s")
    output = redact((done.stdout + done.stderr).strip())
    tail = "\n".join(output.splitlines()[-15:])
    failures = parse_junit_failures(junit.read_text("utf-8")) if junit.is_file() else ()
    return EstimatorTestRun("passed" if done.returncode == 0 else "failed", shown, done.returncode, tail,
                            failures=failures, output=_cap(output, MAX_OUTPUT_CHARS))


def _tests_failed(tests: EstimatorTestRun, tests_path: str) -> str:
    """The verification error for failing estimator tests: the first failing test, its assertion, its values."""
    if not tests.failures:
        last = tests.output_tail.strip().splitlines()[-1:] or [""]
        exit_code = "timed out" if tests.returncode is None else f"exit {tests.returncode}"
        return f"{tests_path} failed ({exit_code}): {last[0]}".rstrip(": ")
    more = len(tests.failures) - 1
    return tests.failures[0].one_line() + (f" (and {more} more failing test{'s' if more > 1 else ''})" if more else "")


_LOCAL = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s+= (.*)$")


def parse_junit_failures(xml: str) -> tuple[TestFailure, ...]:
    """Failing/erroring test cases of a pytest JUnit XML report (``junit_family=xunit1``: it names the file)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return ()
    failures = []
    for case in root.iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is None:
            continue
        details = redact(problem.text or "")
        message = redact(problem.get("message") or "")
        assertion = next((line.strip() for line in message.splitlines() if line.strip()), "") or _last_e_line(details)
        failures.append(TestFailure(
            test_id=_node_id(case), assertion=_cap(assertion.removeprefix("AssertionError: "), 300),
            values=_frame_locals(details), details=_cap(details, MAX_OUTPUT_CHARS // 2),
        ))
    return tuple(failures)


def _node_id(case: ElementTree.Element) -> str:
    """``file::Class::name`` as pytest would print it, from xunit1's ``file``/``classname``/``name``."""
    file, classname, name = case.get("file") or "", case.get("classname") or "", case.get("name") or ""
    if not file:
        return f"{classname}::{name}" if classname else name
    module = file.removesuffix(".py").replace("/", ".").replace("\\", ".")
    inner = classname[len(module):].lstrip(".") if classname.startswith(module) else ""
    return "::".join([file, *(inner.split(".") if inner else []), name])


def _frame_locals(details: str) -> tuple[tuple[str, str], ...]:
    """The last block of ``name = repr`` lines pytest ``-l`` printed (the frame that failed), short values only."""
    blocks: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for line in details.splitlines():
        match = _LOCAL.match(line)
        if match:
            current.append((match.group(1), match.group(2).strip()))
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    if not blocks:
        return ()
    return tuple((name, value) for name, value in blocks[-1]
                 if name != "self" and not name.startswith("@") and len(value) <= MAX_VALUE_CHARS)


def _last_e_line(details: str) -> str:
    lines = [line[1:].strip() for line in details.splitlines() if line.startswith("E ")]
    return lines[0] if lines else ""


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 40] + f"\n… ({len(text) - limit + 40} more characters)"
