"""verify_edited_estimator: fresh-interpreter checks in a throw-away copy of the target repository."""

from __future__ import annotations

from pathlib import Path

import pytest
from github_server.samples import CALIBRATION, FIXTURE_ESTIMATOR, FIXTURE_TESTS, git, make_target_repo

from autopack.github.errors import VerificationError
from autopack.github.estimator_edit import apply_proposal, read_tables
from autopack.github.verify import parse_junit_failures, verify_edited_estimator

REPO_ROOT = Path(__file__).resolve().parents[1]
CHANGES = CALIBRATION["proposed_changes"]
METADATA = CALIBRATION["metadata"]


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return make_target_repo(tmp_path / "target")


def test_good_edit_passes_every_check(target: Path) -> None:
    edited = apply_proposal(FIXTURE_ESTIMATOR, CHANGES, METADATA)
    report = verify_edited_estimator(target, edited, CHANGES)
    assert report.ok, report.errors
    assert [(c.coefficient, c.key, c.actual) for c in report.table_checks] == [
        ("BUDGET_FACTORS", ("implementation", "low"), 1.42), ("PHASE_OVERHEAD", ("implementation", "low"), 410)]
    assert report.tests.status == "passed"
    assert report.module_file is not None and not Path(report.module_file).is_relative_to(target)
    report.raise_for_failure()


def test_the_target_repository_is_not_touched(target: Path) -> None:
    edited = apply_proposal(FIXTURE_ESTIMATOR, CHANGES, METADATA)
    head = git(target, "rev-parse", "HEAD")
    verify_edited_estimator(target, edited, CHANGES)
    assert git(target, "status", "--porcelain") == ""
    assert git(target, "rev-parse", "HEAD") == head
    assert (target / "autopack" / "token_estimator.py").read_text() == FIXTURE_ESTIMATOR


def test_failing_estimator_tests_name_the_test_its_assertion_and_the_value(target: Path) -> None:
    changes = [{"coefficient": "BUDGET_FACTORS", "key": ["tests", "low"], "old": None, "new": -1.0}]
    edited = apply_proposal(FIXTURE_ESTIMATOR, changes, METADATA)
    report = verify_edited_estimator(target, edited, changes)
    assert not report.ok
    assert report.tests.status == "failed"
    (failure,) = report.tests.failures
    assert failure.test_id == "tests/test_token_estimator.py::test_tables_are_positive"
    assert failure.assertion == "assert -1.0 > 0"
    assert ("key", "('tests', 'low')") in failure.values and ("value", "-1.0") in failure.values
    assert report.failure_summary() == ("tests/test_token_estimator.py::test_tables_are_positive failed: "
                                        "assert -1.0 > 0 (key = ('tests', 'low'), table = {('tests', 'low'): -1.0}, "
                                        "value = -1.0)")
    assert "1 failed" in report.tests.output and "test_tables_are_positive" in report.tests.output
    with pytest.raises(VerificationError, match=r"failed verification: tests/test_token_estimator.py::"):
        report.raise_for_failure()


def test_several_failing_tests_are_counted_in_the_one_line(tmp_path: Path) -> None:
    tests = FIXTURE_TESTS + (
        "\n\ndef test_factor_is_moderate():\n"
        "    assert abs(BUDGET_FACTORS.get(('tests', 'low'), 1)) < 3, 'factor out of range'\n")
    target = make_target_repo(tmp_path / "two", tests=tests)
    changes = [{"coefficient": "BUDGET_FACTORS", "key": ["tests", "low"], "old": None, "new": -5.0}]
    report = verify_edited_estimator(target, apply_proposal(FIXTURE_ESTIMATOR, changes, METADATA), changes)
    assert [f.test_id.rsplit("::", 1)[1] for f in report.tests.failures] == ["test_tables_are_positive",
                                                                             "test_factor_is_moderate"]
    assert report.tests.failures[1].assertion == "factor out of range"
    assert report.failure_summary().endswith("(and 1 more failing test)")


def test_junit_report_parsing_handles_classes_parameters_and_errors() -> None:
    xml = """<testsuites><testsuite>
      <testcase classname="tests.test_e.TestK" name="test_p[-1]" file="tests/test_e.py" line="6">
        <failure message="AssertionError: v must be positive, got -1&#10;assert -1 &gt; 0">self = &lt;T&gt;, v = -1

E   AssertionError: v must be positive, got -1

self       = &lt;test_e.TestK object&gt;
v          = -1

tests/test_e.py:9: AssertionError</failure></testcase>
      <testcase classname="tests.test_e" name="test_ok" file="tests/test_e.py" line="1"/>
      <testcase classname="tests.test_e" name="test_fixture" file="tests/test_e.py" line="3">
        <error message="failed on setup with &quot;RuntimeError: no db&quot;">E   RuntimeError: no db</error>
      </testcase></testsuite></testsuites>"""
    first, second = parse_junit_failures(xml)
    assert (first.test_id, first.assertion, first.values) == (
        "tests/test_e.py::TestK::test_p[-1]", "v must be positive, got -1", (("v", "-1"),))
    assert (second.test_id, second.assertion) == ("tests/test_e.py::test_fixture",
                                                  'failed on setup with "RuntimeError: no db"')
    assert parse_junit_failures("not xml") == ()


def test_module_that_does_not_import_fails_verification(target: Path) -> None:
    edited = apply_proposal(FIXTURE_ESTIMATOR, CHANGES, METADATA) + "\nraise RuntimeError('boom')\n"
    report = verify_edited_estimator(target, edited, CHANGES, run_tests=False)
    assert not report.ok
    assert any("RuntimeError: boom" in e for e in report.errors)


def test_a_module_that_forges_the_probes_output_fails_verification_in_one_line(target: Path) -> None:
    """The probe's output comes from the target's code: what it printed is checked, never trusted."""
    forged = 'import os\nprint("AUTOPACK_ESTIMATOR_PROBE {\\"values\\": 7}", flush=True)\nos._exit(0)\n'
    report = verify_edited_estimator(target, forged, CHANGES, run_tests=False)
    assert not report.ok
    (error,) = [e for e in report.errors if "importing the edited module failed" in e]
    assert "the import probe printed output it should not" in error and "\n" not in error


def test_a_phase_whose_estimator_names_no_group_is_reported_under_its_own_group(target: Path) -> None:
    """An estimator without ``group`` on its estimate: the comparison names the phase's category and complexity."""
    planner = (
        "\n\nclass PhaseFeatures:\n    def __init__(self, **kw):\n        self.__dict__.update(kw)\n\n"
        "class _Estimate:\n    predicted_output_tokens = 900\n\n"
        "class _Decision:\n    selected_budget = actual_max_tokens = 1800\n\n"
        "def plan_call(features):\n    return _Estimate(), _Decision()\n"
    )
    edited = apply_proposal(FIXTURE_ESTIMATOR, CHANGES, METADATA) + planner
    report = verify_edited_estimator(target, edited, CHANGES, run_tests=False)
    assert report.ok, report.errors
    assert [c.estimated_group for c in report.estimates] == [("implementation", "low")]


def test_values_that_do_not_read_back_fail_verification(target: Path) -> None:
    report = verify_edited_estimator(target, FIXTURE_ESTIMATOR, CHANGES, run_tests=False)
    assert not report.ok
    assert [c.ok for c in report.table_checks] == [False, False]
    assert any("reads back as 634, expected 410" in e for e in report.errors)


def test_missing_estimator_tests_are_reported_not_failed(tmp_path: Path) -> None:
    target = make_target_repo(tmp_path / "no-tests", tests=None)
    report = verify_edited_estimator(target, apply_proposal(FIXTURE_ESTIMATOR, CHANGES, METADATA), CHANGES)
    assert report.ok
    assert report.tests.status == "not_found"
    assert any("does not exist" in n for n in report.notes)


@pytest.mark.skipif(not (REPO_ROOT / "autopack" / "token_estimator.py").is_file(), reason="estimator not written yet")
def test_real_estimator_reports_ceilings_before_and_after() -> None:
    source = (REPO_ROOT / "autopack" / "token_estimator.py").read_text()
    old_factor = read_tables(source)["BUDGET_FACTORS"].get(("implementation", "low"))
    changes = [{"coefficient": "BUDGET_FACTORS", "key": ["implementation", "low"], "old": old_factor, "new": 1.01,
                "category": "implementation", "complexity": "low"}]
    edited = apply_proposal(source, changes, METADATA)
    report = verify_edited_estimator(REPO_ROOT, edited, changes, original_source=source, ref=None, run_tests=False)
    assert report.ok, report.errors
    (comparison,) = report.estimates
    assert comparison.estimated_group == ("implementation", "low")
    assert comparison.old is not None
    assert isinstance(comparison.new.predicted, int) and comparison.old.predicted == comparison.new.predicted
    # A calibrated factor replaces the floor-and-buffer rule, so this group's ceiling moves.
    assert comparison.new.selected_budget != comparison.old.selected_budget
