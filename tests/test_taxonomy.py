"""The one normaliser: every spelling the original's data used reaches one canonical value."""

from __future__ import annotations

import pytest

from autopack.taxonomy import (
    CATEGORIES,
    COMPLEXITIES,
    canonical_category,
    canonical_complexity,
    is_docs_like,
    normalise_category,
    normalise_complexity,
)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("tests", "tests"),
        ("testing", "tests"),
        ("Testing", "tests"),
        ("test", "tests"),
        ("docs", "docs"),
        ("documentation", "docs"),
        ("DOCUMENTATION", "docs"),
        ("doc_write", "docs"),
        ("doc_synthesis", "doc_synthesis"),
        ("doc_sot_update", "doc_sot_update"),
        ("IMPLEMENT_FEATURE", "implementation"),
        ("implement feature", "implementation"),
        ("implementation", "implementation"),
        ("bug_fix", "bugfix"),
        ("bugfix", "bugfix"),
        ("  Refactor ", "refactoring"),
    ],
)
def test_category_spellings(raw: str, canonical: str) -> None:
    result = normalise_category(raw)
    assert result.value == canonical
    assert result.known
    assert result.raw == raw


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("low", "low"),
        ("LOW", "low"),
        ("Medium", "medium"),
        ("HIGH", "high"),
        ("SIMPLE", "low"),
        ("trivial", "low"),
        ("moderate", "medium"),
        ("MEDIUM-HIGH", "high"),
        ("medium_high", "high"),
        ("complex", "high"),
        ("maintenance", "maintenance"),
    ],
)
def test_complexity_spellings(raw: str, canonical: str) -> None:
    result = normalise_complexity(raw)
    assert result.value == canonical
    assert result.known


def test_unknown_category_is_kept_lower_cased_and_flagged() -> None:
    result = normalise_category("Maintenance-Chores")
    assert (result.value, result.known, result.raw) == ("maintenance_chores", False, "Maintenance-Chores")


def test_unknown_complexity_is_kept_and_flagged() -> None:
    result = normalise_complexity("Extreme")
    assert (result.value, result.known) == ("extreme", False)


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_missing_values_are_unknown_not_defaulted(raw: object) -> None:
    assert normalise_category(raw).value == "unknown" and not normalise_category(raw).known
    assert normalise_complexity(raw).value == "unknown" and not normalise_complexity(raw).known


def test_canonical_values_are_fixed_points() -> None:
    assert all(canonical_category(c) == c for c in CATEGORIES)
    assert all(canonical_complexity(c) == c for c in COMPLEXITIES)


@pytest.mark.parametrize(("raw", "docs"), [("docs", True), ("documentation", True), ("doc_synthesis", True),
                                           ("doc_sot_update", True), ("testing", False), ("implementation", False)])
def test_docs_like(raw: str, docs: bool) -> None:
    assert is_docs_like(raw) is docs
