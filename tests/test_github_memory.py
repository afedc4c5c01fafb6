"""A human's "no" lasts: what counts as the same proposal, and what each pull request's history means."""

from __future__ import annotations

from datetime import datetime

from autopack.github.memory import PastProposal, PullHistory, find_declined, proposals_of
from autopack.github.proposal import Change, material_difference, parse_changes
from autopack.github.result import commit_message, proposal_in_message

FACTOR = ("BUDGET_FACTORS", ("implementation", "low"))
OVERHEAD = ("PHASE_OVERHEAD", ("implementation", "low"))


def changes(factor: float | None = 1.42, overhead: float | None = 410) -> tuple[Change, ...]:
    out = []
    if factor is not None:
        out.append(Change(*FACTOR, None, factor))
    if overhead is not None:
        out.append(Change(*OVERHEAD, 634, overhead))
    return tuple(out)


def closed(digest: str, values: tuple[Change, ...] | None, *, number: int = 1, day: int = 1) -> PastProposal:
    return PastProposal(digest, values, "closed", number, f"https://h/pull/{number}", datetime(2026, 11, day))


# --- material difference ---------------------------------------------------------------------------


def test_values_within_the_tolerance_are_not_a_material_difference() -> None:
    assert material_difference(changes(1.46, 430), changes(1.42, 410), 0.10) is None


def test_one_value_beyond_the_tolerance_is_material_and_named() -> None:
    reason = material_difference(changes(1.42, 460), changes(1.42, 410), 0.10)
    assert reason == "PHASE_OVERHEAD['implementation', 'low'] 410 → 460 (more than 10% apart)"


def test_the_tolerance_is_relative_to_the_larger_value_so_it_is_symmetric() -> None:
    assert material_difference(changes(1.0, 400), changes(1.0, 444), 0.10) is None  # 44 ≤ 0.1 × 444
    assert material_difference(changes(1.0, 444), changes(1.0, 400), 0.10) is None
    assert material_difference(changes(1.0, 400), changes(1.0, 450), 0.10) is not None


def test_a_zero_differs_from_anything_but_zero() -> None:
    assert material_difference(changes(1.42, 0), changes(1.42, 1), 0.10) is not None
    assert material_difference(changes(1.42, 0), changes(1.42, 0), 0.10) is None


def test_another_set_of_coefficients_is_material_even_with_equal_values() -> None:
    reason = material_difference(changes(1.42, None), changes(1.42, 410), 0.10)
    assert reason == "another set of coefficients (drops PHASE_OVERHEAD['implementation', 'low'])"
    reason = material_difference(changes(1.42, 410), changes(None, 410), 0.10)
    assert reason == "another set of coefficients (adds BUDGET_FACTORS['implementation', 'low'])"


def test_old_values_do_not_matter_only_what_would_ship() -> None:
    moved_base = (Change(*FACTOR, 1.2, 1.42), Change(*OVERHEAD, 500, 410))
    assert material_difference(moved_base, changes(1.42, 410), 0.10) is None


# --- the declined proposal -------------------------------------------------------------------------


def test_the_same_hash_is_declined_even_when_its_values_are_unknown() -> None:
    past = [closed("a" * 64, None)]
    assert find_declined(changes(), "a" * 64, past) == past[0]
    assert find_declined(changes(), "b" * 64, past) is None


def test_a_close_proposal_is_declined_by_the_newest_matching_closure() -> None:
    old, new = closed("a" * 64, changes(1.40, 400), number=1, day=1), closed("c" * 64, changes(1.43, 415), number=2,
                                                                             day=9)
    assert find_declined(changes(1.42, 410), "b" * 64, [old, new]) == new


def test_open_merged_and_superseded_proposals_decline_nothing() -> None:
    past = [PastProposal("a" * 64, changes(), status) for status in ("open", "merged", "superseded")]
    assert find_declined(changes(), "a" * 64, past) is None


def test_the_tolerance_is_a_parameter() -> None:
    past = [closed("a" * 64, changes(1.42, 410))]
    assert find_declined(changes(1.42, 440), "b" * 64, past, tolerance=0.10) is not None
    assert find_declined(changes(1.42, 440), "b" * 64, past, tolerance=0.05) is None


# --- what a pull request's history means -----------------------------------------------------------


def test_a_closed_pr_declines_every_proposal_it_carried_not_only_its_last() -> None:
    first, last = PastProposal("a" * 64, changes(), "closed", commit_sha="1" * 40), PastProposal(
        "b" * 64, changes(1.9, 300), "closed", commit_sha="2" * 40)
    pull = PullHistory(1, "https://h/pull/1", "closed", datetime(2026, 11, 2), "b" * 64, (first, last))
    found = {p.digest: (p.status, p.pr_number, p.commit_sha) for p in proposals_of([pull])}
    assert found == {"a" * 64: ("closed", 1, "1" * 40), "b" * 64: ("closed", 1, "2" * 40)}


def test_a_merged_pr_merged_its_last_proposal_and_superseded_the_others() -> None:
    carried = (PastProposal("a" * 64, None, "closed"), PastProposal("b" * 64, None, "closed"))
    pull = PullHistory(1, None, "merged", datetime(2026, 11, 2), "b" * 64, carried)
    assert {p.digest: p.status for p in proposals_of([pull])} == {"a" * 64: "superseded", "b" * 64: "merged"}


def test_an_open_pr_shows_its_marker_proposal() -> None:
    pull = PullHistory(3, None, "open", None, "c" * 64)
    (only,) = proposals_of([pull])
    assert (only.digest, only.status, only.closed_at) == ("c" * 64, "open", None)


def test_a_pr_whose_body_lost_its_marker_still_counts_its_commits() -> None:
    pull = PullHistory(1, None, "closed", datetime(2026, 11, 2), None, (PastProposal("a" * 64, None, "closed"),))
    assert [p.status for p in proposals_of([pull])] == ["closed"]


def test_the_commit_trailer_names_the_proposal() -> None:
    digest = "d" * 64
    assert proposal_in_message(commit_message("Calibrate", digest)) == digest
    assert proposal_in_message("Calibrate\n\nno trailer here") is None
    assert parse_changes(list(changes()))  # Change objects pass through parse_changes unchanged
