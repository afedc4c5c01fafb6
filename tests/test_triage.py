"""The drain's pure triage rules (reference §4.4–4.5): fingerprints, zero-yield reasons, skips, priorities."""

from __future__ import annotations

import pytest

from autopack.execution.triage import (
    GROUP_PROMISING,
    GROUP_RETRY,
    GROUP_UNSAMPLED,
    NORMALISATION_STEPS,
    Candidate,
    TriageLimits,
    TriageView,
    ZeroYield,
    failure_bucket,
    failure_fingerprint,
    normalize_error_text,
    order_candidates,
    rc_bucket,
    returncode_for_signal,
    sample_is_promising,
    skip_reason,
    zero_yield_reason,
)

# --- normalisation: each step of §4.5, in order -----------------------------------------------------


def test_normalisation_steps_are_in_the_reference_order() -> None:
    assert [name for name, _, _ in NORMALISATION_STEPS] == [
        "date",
        "time",
        "windows_path",
        "unix_path",
        "address",
        "line_number",
        "colon_number",
        "session_id",
        "number",
        "whitespace",
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ImportError: Cannot Import", "importerror: cannot import"),  # lower-case
        ("failed on 2025-12-28", "failed on date"),  # dates
        ("at 16:22:03 it broke", "at time it broke"),  # times
        (r"open C:\dev\Autopack\x.py failed", "open path failed"),  # Windows paths
        ("open /tmp/work/x.py failed", "open path failed"),  # Unix paths
        ("object at 0x7f8a1b2c", "object at addr"),  # addresses
        ("error at line 123", "error at line num"),  # line numbers
        ("module.py:456 boom", "module.py:num boom"),  # :N
        ("in session-20251228-162203 now", "in session-id now"),  # session ids
        ("in batch-drain-20251228-162203 now", "in batch-drain-id now"),
        ("retried 3 times", "retried num times"),  # standalone numbers
        ("v2 x86 kept", "v2 x86 kept"),  # numbers inside words stay
        ("a  \n\t b", "a b"),  # whitespace collapsed
    ],
)
def test_each_normalisation_step(raw: str, expected: str) -> None:
    assert normalize_error_text(raw) == expected


def test_order_matters_time_before_colon_number() -> None:
    # ":22:03" would become ":num:num" if the colon rule ran first.
    assert normalize_error_text("12:22:03") == "time"


def test_order_matters_date_before_session_id() -> None:
    # A dashed date inside an id is a date first, so the id rule no longer matches it.
    assert normalize_error_text("run-2025-12-28") == "run-date"


def test_normalisation_of_empty_text() -> None:
    assert normalize_error_text(None) == ""
    assert normalize_error_text("") == ""


def test_similar_errors_share_a_fingerprint() -> None:
    a = failure_fingerprint("FAILED", 1, "ImportError at line 123: cannot import foo from /a/b.py:456")
    b = failure_fingerprint("FAILED", 1, "ImportError at line 789: cannot import foo from /c/d.py:12")
    assert a == b == "FAILED|rc1|importerror at line num: cannot import foo from path:num"


def test_fingerprint_keeps_state_and_rc_bucket_and_200_chars() -> None:
    fp = failure_fingerprint("TIMEOUT", 143, "x" * 500)
    state, bucket, error = fp.split("|")
    assert (state, bucket, len(error)) == ("TIMEOUT", "timeout143", 200)


def test_fingerprint_without_error_or_returncode() -> None:
    assert failure_fingerprint("FAILED", None, None) == "FAILED"


@pytest.mark.parametrize(
    ("rc", "bucket"), [(-1, "timeout"), (0, "rc0"), (1, "rc1"), (143, "timeout143"), (137, "rc137"), (None, None)]
)
def test_rc_buckets(rc: int | None, bucket: str | None) -> None:
    assert rc_bucket(rc) == bucket


def test_signal_returncodes_follow_the_shell() -> None:
    assert returncode_for_signal(15) == 143
    assert returncode_for_signal(9) == 137


# --- zero-yield reasons, first matching rule wins -----------------------------------------------------


def _reason(**overrides: object) -> str | None:
    args: dict[str, object] = {
        "telemetry_events": 0,
        "success": False,
        "timed_out": False,
        "reached_llm_boundary": False,
        "failure_stage": None,
    }
    args.update(overrides)
    return zero_yield_reason(**args)  # type: ignore[arg-type]


def test_telemetry_means_no_zero_yield_reason() -> None:
    assert _reason(telemetry_events=3, success=False, timed_out=True) is None


def test_success_without_telemetry() -> None:
    assert _reason(success=True, reached_llm_boundary=True) == ZeroYield.SUCCESS_NO_LLM_CALLS


def test_timeout_beats_boundary() -> None:
    assert _reason(timed_out=True, reached_llm_boundary=True) == ZeroYield.TIMEOUT


@pytest.mark.parametrize("kwargs", [{"reached_llm_boundary": True}, {"failure_stage": "llm_boundary"}])
def test_llm_boundary(kwargs: dict[str, object]) -> None:
    assert _reason(**kwargs) == ZeroYield.LLM_BOUNDARY_HIT


def test_failed_before_llm() -> None:
    assert _reason(failure_stage="before_llm") == ZeroYield.FAILED_BEFORE_LLM


@pytest.mark.parametrize("stage", ["provider", "execution", "validation"])
def test_execution_error(stage: str) -> None:
    assert _reason(failure_stage=stage) == ZeroYield.EXECUTION_ERROR


def test_unknown_when_the_result_says_nothing() -> None:
    assert _reason() == ZeroYield.UNKNOWN


def test_error_text_is_never_searched() -> None:
    # The original matched "max tokens" anywhere in stdout; a structured result has no such path.
    assert _reason(failure_stage="execution") == ZeroYield.EXECUTION_ERROR


# --- sample-first triage ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "promising"),
    [
        ({"success": True}, True),
        ({"telemetry_events": 2}, True),
        ({"timed_out": True}, True),
        ({"fingerprint": None}, True),
        ({"fingerprint": "FAILED|rc1|new"}, True),
        ({"fingerprint": "FAILED|rc1|seen"}, False),
    ],
)
def test_sample_first_triage(kwargs: dict[str, object], promising: bool) -> None:
    args: dict[str, object] = {
        "success": False,
        "telemetry_events": 0,
        "timed_out": False,
        "fingerprint": "FAILED|rc1|x",
        "fingerprint_counts": {"FAILED|rc1|seen": 1},
    }
    args.update(kwargs)
    assert sample_is_promising(**args) is promising  # type: ignore[arg-type]


# --- skip rules --------------------------------------------------------------------------------------

LIMITS = TriageLimits(max_fingerprint_repeats=3, max_attempts_per_phase=2, max_timeouts_per_run=2)


def test_skip_deprioritized_run() -> None:
    assert "deprioritized" in (skip_reason("r", "p", TriageView(deprioritized_runs=frozenset({"r"})), LIMITS) or "")


def test_skip_stopped_run() -> None:
    assert "stopped" in (skip_reason("r", "p", TriageView(stopped_runs=frozenset({"r"})), LIMITS) or "")


def test_skip_run_at_timeout_limit() -> None:
    assert skip_reason("r", "p", TriageView(timeouts={"r": 1}), LIMITS) is None
    assert "timeouts" in (skip_reason("r", "p", TriageView(timeouts={"r": 2}), LIMITS) or "")


def test_skip_phase_at_attempt_limit() -> None:
    assert skip_reason("r", "p", TriageView(attempts={("r", "p"): 1}), LIMITS) is None
    assert "attempted 2" in (skip_reason("r", "p", TriageView(attempts={("r", "p"): 2}), LIMITS) or "")


# --- priorities -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "bucket"),
    [
        (None, 0),
        ("", 0),
        ("Collection error in tests", 1),
        ("ImportError", 1),
        ("deliverable not produced", 2),
        ("Missing file", 2),
        ("patch failed to apply", 3),
        ("no-op change", 3),
        ("manifest mismatch", 3),
        ("builder crashed", 4),
        ("Timed out after 900s", 5),
        ("timeout", 5),
        ("import timeout", 1),  # the original checks collection/import first
    ],
)
def test_failure_buckets(reason: str | None, bucket: int) -> None:
    assert failure_bucket(reason) == bucket


def _c(run: str, phase: str, index: int = 0, reason: str | None = None, state: str = "FAILED") -> Candidate:
    return Candidate(run, phase, index, state, reason)


def test_unsampled_runs_come_before_promising_runs() -> None:
    view = TriageView(sampled_runs=frozenset({"a"}), promising_runs=frozenset({"a"}))
    ordered = order_candidates([_c("a", "a1", 0), _c("b", "b5", 5)], view, LIMITS)
    assert [c.phase_id for c in ordered] == ["b5", "a1"]


def test_retries_come_last() -> None:
    view = TriageView(
        sampled_runs=frozenset({"a"}), promising_runs=frozenset({"a"}), attempts={("a", "a0"): 1}
    )
    ordered = order_candidates([_c("a", "a0", 0), _c("a", "a9", 9, "timeout")], view, LIMITS)
    assert [c.phase_id for c in ordered] == ["a9", "a0"]
    assert (GROUP_UNSAMPLED, GROUP_PROMISING, GROUP_RETRY) == (0, 1, 2)


def test_buckets_before_phase_index_within_a_group() -> None:
    ordered = order_candidates(
        [_c("a", "t", 0, "timed out"), _c("b", "o", 1, "other"), _c("c", "n", 2, None), _c("d", "i", 3, "import")],
        TriageView(),
        LIMITS,
    )
    assert [c.phase_id for c in ordered] == ["n", "i", "o", "t"]


def test_lowest_phase_index_within_a_bucket() -> None:
    ordered = order_candidates([_c("a", "x", 7), _c("a", "y", 2)], TriageView(), LIMITS)
    assert ordered[0].phase_id == "y"


def test_deprioritized_and_prefixed_runs_are_left_out() -> None:
    view = TriageView(sampled_runs=frozenset({"bad"}), deprioritized_runs=frozenset({"bad"}))
    ordered = order_candidates(
        [_c("bad", "1"), _c("legacy-x", "2"), _c("good", "3")], view, LIMITS, skip_run_prefixes=["legacy-"]
    )
    assert [c.run_id for c in ordered] == ["good"]


def test_a_run_waits_while_its_sample_is_in_flight() -> None:
    ordered = order_candidates([_c("a", "a1", 1), _c("b", "b0", 0)], TriageView(), LIMITS, in_flight=[("a", "a0")])
    assert [c.phase_id for c in ordered] == ["b0"]


def test_a_promising_run_runs_in_parallel() -> None:
    view = TriageView(sampled_runs=frozenset({"a"}), promising_runs=frozenset({"a"}))
    ordered = order_candidates([_c("a", "a1", 1), _c("a", "a2", 2)], view, LIMITS, in_flight=[("a", "a0")])
    assert [c.phase_id for c in ordered] == ["a1", "a2"]
