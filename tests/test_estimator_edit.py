"""apply_proposal: libcst edits that touch only the coefficient lines and refuse stale proposals."""

from __future__ import annotations

import difflib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from github_server.samples import CALIBRATION, FIXTURE_ESTIMATOR

from autopack.errors import InputError
from autopack.github.errors import EstimatorEditError, StaleProposalError
from autopack.github.estimator_edit import apply_proposal, read_stamp, read_tables

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_ESTIMATOR = REPO_ROOT / "autopack" / "token_estimator.py"
METADATA = CALIBRATION["metadata"]


def diff_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """(removed lines, added lines) of the unified diff, without the +/- prefix."""
    removed, added = [], []
    for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0):
        if line.startswith(("---", "+++", "@@")):
            continue
        (removed if line.startswith("-") else added).append(line[1:])
    return removed, added


def load(source: str, tmp_path: Path, name: str = "edited_estimator"):  # type: ignore[no-untyped-def]
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_diff_touches_only_the_proposed_entries_and_the_stamp() -> None:
    edited = apply_proposal(FIXTURE_ESTIMATOR, CALIBRATION["proposed_changes"], METADATA)
    removed, added = diff_lines(FIXTURE_ESTIMATOR, edited)
    assert removed == [
        'CALIBRATION_VERSION = "v5-step2"',
        'CALIBRATION_DATE = "2025-12-29"',
        "CALIBRATION_SAMPLES = 45",
        '    ("implementation", "low"): 634,',
        "BUDGET_FACTORS: dict[tuple[str, str], float] = {}  # filled by the calibration pull request",
    ]
    assert added == [
        'CALIBRATION_VERSION = "autopack-cal-20261126"',
        'CALIBRATION_DATE = "2026-11-26"',
        "CALIBRATION_SAMPLES = 120",
        '    ("implementation", "low"): 410,',
        "BUDGET_FACTORS: dict[tuple[str, str], float] = {",
        '    ("implementation", "low"): 1.42,',
        "}  # filled by the calibration pull request",
    ]


def test_edited_file_imports_with_the_proposed_values(tmp_path: Path) -> None:
    edited = apply_proposal(FIXTURE_ESTIMATOR, CALIBRATION["proposed_changes"], METADATA)
    module = load(edited, tmp_path)
    assert module.PHASE_OVERHEAD[("implementation", "low")] == 410
    assert module.BUDGET_FACTORS == {("implementation", "low"): 1.42}
    assert (module.CALIBRATION_VERSION, module.CALIBRATION_DATE, module.CALIBRATION_SAMPLES) == (
        "autopack-cal-20261126", "2026-11-26", 120)
    assert module.ceiling("implementation", "low") == int(int(410 * 1.3) * 1.42)


def test_comments_and_entry_order_are_kept() -> None:
    changes = [{"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "medium"], "old": 1176, "new": 1300}]
    edited = apply_proposal(FIXTURE_ESTIMATOR, changes, METADATA)
    comments = [line for line in FIXTURE_ESTIMATOR.splitlines() if "#" in line]
    assert [line for line in edited.splitlines() if "#" in line] == [
        c.replace("1176", "1300") for c in comments
    ]
    assert list(read_tables(edited)["PHASE_OVERHEAD"]) == list(read_tables(FIXTURE_ESTIMATOR)["PHASE_OVERHEAD"])


def test_new_key_is_appended_last_formatted_like_its_neighbours() -> None:
    changes = [{"coefficient": "PHASE_OVERHEAD", "key": ["docs", "low"], "old": None, "new": 1500}]
    edited = apply_proposal(FIXTURE_ESTIMATOR, changes, METADATA)
    removed, added = diff_lines(FIXTURE_ESTIMATOR, edited)
    assert added[-1] == '    ("docs", "low"): 1500,'
    assert len(removed) == len(added) - 1 == 3  # the stamp, plus the one inserted line
    lines = edited.splitlines()
    at = lines.index('    ("docs", "low"): 1500,')
    assert lines[at - 1] == '    ("tests", "low"): 915,' and lines[at + 1] == "}"


def test_single_line_dict_stays_on_one_line() -> None:
    changes = [{"coefficient": "TOKEN_WEIGHTS", "key": ["test", "new"], "old": None, "new": 1400}]
    edited = apply_proposal(FIXTURE_ESTIMATOR, changes, METADATA)
    _, added = diff_lines(FIXTURE_ESTIMATOR, edited)
    assert added[-1] == (
        'TOKEN_WEIGHTS: dict[tuple[str, str], int] = {("backend", "new"): 2000, ("backend", "modify"): 700, '
        '("test", "new"): 1400}'
    )


def test_stale_old_value_is_refused() -> None:
    changes = [{"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "low"], "old": 600, "new": 410}]
    with pytest.raises(StaleProposalError, match=r"stale proposal: .*is 634 in the file.*expects 600"):
        apply_proposal(FIXTURE_ESTIMATOR, changes, METADATA)


def test_new_entry_for_an_existing_key_is_refused() -> None:
    changes = [{"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "low"], "old": None, "new": 410}]
    with pytest.raises(StaleProposalError, match="expects no entry"):
        apply_proposal(FIXTURE_ESTIMATOR, changes, METADATA)


def test_change_of_a_missing_key_is_refused() -> None:
    changes = [{"coefficient": "BUDGET_FACTORS", "key": ["tests", "low"], "old": 1.1, "new": 1.2}]
    with pytest.raises(StaleProposalError, match="not in the file"):
        apply_proposal(FIXTURE_ESTIMATOR, changes, METADATA)


def test_unknown_table_is_refused() -> None:
    changes = [{"coefficient": "NO_SUCH_TABLE", "key": ["a", "b"], "old": None, "new": 1}]
    with pytest.raises(EstimatorEditError, match="unknown coefficient table 'NO_SUCH_TABLE'"):
        apply_proposal(FIXTURE_ESTIMATOR, changes, METADATA)


def test_scalar_is_not_a_table() -> None:
    changes = [{"coefficient": "SAFETY_MARGIN", "key": ["a", "b"], "old": None, "new": 1}]
    with pytest.raises(EstimatorEditError, match="not a dict literal"):
        apply_proposal(FIXTURE_ESTIMATOR, changes, METADATA)


def test_fractional_value_for_an_integer_table_is_refused() -> None:
    changes = [{"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "low"], "old": 634, "new": 410.5}]
    with pytest.raises(EstimatorEditError, match="holds integers"):
        apply_proposal(FIXTURE_ESTIMATOR, changes, METADATA)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"coefficient": "PHASE_OVERHEAD", "key": ["only-one"], "old": None, "new": 1}, "two strings"),
        ({"coefficient": "PHASE_OVERHEAD", "key": ["a", "b"], "old": None, "new": "big"}, "finite number"),
        ({"coefficient": "1bad", "key": ["a", "b"], "old": None, "new": 1}, "table name"),
    ],
)
def test_malformed_changes_are_input_errors(change: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        apply_proposal(FIXTURE_ESTIMATOR, [change], METADATA)


def test_duplicate_changes_are_refused() -> None:
    change = {"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "low"], "old": 634, "new": 410}
    with pytest.raises(InputError, match="appears twice"):
        apply_proposal(FIXTURE_ESTIMATOR, [change, dict(change)], METADATA)


def test_missing_generated_at_is_refused() -> None:
    with pytest.raises(InputError, match="generated_at"):
        apply_proposal(FIXTURE_ESTIMATOR, CALIBRATION["proposed_changes"], {"total_samples": 3})


def test_read_stamp_reports_the_current_stamp() -> None:
    assert read_stamp(FIXTURE_ESTIMATOR) == {
        "CALIBRATION_VERSION": "v5-step2", "CALIBRATION_DATE": "2025-12-29", "CALIBRATION_SAMPLES": 45}


# --- the real estimator (written by the lead; the tables the calibration edits) ---------------------

real = pytest.mark.skipif(not REAL_ESTIMATOR.is_file(), reason="autopack/token_estimator.py not written yet")


@real
def test_real_estimator_diff_touches_only_coefficient_lines() -> None:
    source = REAL_ESTIMATOR.read_text()
    tables = read_tables(source)
    overhead = tables["PHASE_OVERHEAD"][("implementation", "low")]
    changes = [
        {"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "low"], "old": overhead, "new": overhead + 1},
        {"coefficient": "BUDGET_FACTORS", "key": ["zz-category", "low"], "old": None, "new": 1.5},
    ]
    edited = apply_proposal(source, changes, METADATA)
    removed, added = diff_lines(source, edited)
    assert [line for line in removed if not line.startswith("CALIBRATION_")] == [
        f'    ("implementation", "low"): {overhead},'
    ]
    coefficient_lines = [line for line in added if not line.startswith("CALIBRATION_")]
    assert coefficient_lines == [f'    ("implementation", "low"): {overhead + 1},', '    ("zz-category", "low"): 1.5,']
    assert len(removed) == 4 and len(added) == 5


@real
def test_real_estimator_edited_imports_in_a_fresh_interpreter(tmp_path: Path) -> None:
    source = REAL_ESTIMATOR.read_text()
    edited = apply_proposal(source, [{"coefficient": "BUDGET_FACTORS", "key": ["implementation", "low"],
                                      "old": read_tables(source)["BUDGET_FACTORS"].get(("implementation", "low")),
                                      "new": 1.42}], METADATA)
    path = tmp_path / "edited_token_estimator.py"
    path.write_text(edited)
    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('edited', {str(path)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['edited'] = m; spec.loader.exec_module(m)\n"
        "print(m.BUDGET_FACTORS[('implementation', 'low')], m.CALIBRATION_VERSION, m.CALIBRATION_SAMPLES)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert done.stdout.split() == ["1.42", "autopack-cal-20261126", "120"]
