"""Token estimator: the original's worked examples (explicit reference coefficients) and invariants.

The calibration pull-request verifier runs this file against an *edited* token_estimator.py. So tests that
use the module's own literals (``current_coefficients()``) assert only invariants that hold for any sane
coefficient set; exact numbers are pinned only with the explicit ``REFERENCE`` set built below.
"""

from __future__ import annotations

import builtins
import dataclasses
import math
import os
import pathlib
from fractions import Fraction
from itertools import pairwise

import pytest

from autopack import token_estimator as te
from autopack.taxonomy import CATEGORIES
from autopack.token_estimator import Coefficients, FileStats, PhaseFeatures

# The original's v5-step2 values (reference §2.1, §2.2, §2.5), keyed by the canonical vocabulary.
REFERENCE = Coefficients(
    version="reference-v5-step2",
    phase_overhead={
        ("implementation", "low"): 634,
        ("implementation", "medium"): 1176,
        ("implementation", "high"): 5000,
        ("tests", "low"): 915,
        ("tests", "medium"): 2500,
        ("tests", "high"): 4000,
        ("docs", "low"): 1500,
        ("docs", "medium"): 2500,
        ("docs", "high"): 3500,
    },
    token_weights={
        ("backend", "new"): 2000,
        ("backend", "modify"): 700,
        ("frontend", "new"): 2800,
        ("frontend", "modify"): 1100,
        ("test", "new"): 1400,
        ("test", "modify"): 600,
        ("doc", "new"): 500,
        ("doc", "modify"): 400,
        ("config", "new"): 1000,
        ("config", "modify"): 500,
    },
    base_budgets={
        ("docs", "low"): 4096,
        ("docs", "medium"): 8192,
        ("docs", "high"): 12288,
        ("tests", "low"): 6144,
        ("tests", "medium"): 8192,
        ("tests", "high"): 12288,
        ("implementation", "low"): 8192,
        ("implementation", "medium"): 12288,
        ("implementation", "high"): 16384,
        ("default", "low"): 8192,
        ("default", "medium"): 12288,
        ("default", "high"): 16384,
    },
    budget_factors={},
    safety_margin=1.3,
    buffer_margin=1.2,
    default_phase_overhead=2000,
)

COMPLEXITIES = ("low", "medium", "high")


def exact_factor_ceiling(predicted: int, factor: float) -> int:
    """⌈predicted × factor⌉ in exact decimal arithmetic (factors are written with three decimals)."""
    return math.ceil(Fraction(predicted) * Fraction(repr(factor)))


def features(category: str | None, complexity: str | None, *deliverables: str, **kw: object) -> PhaseFeatures:
    return PhaseFeatures(category=category, complexity=complexity, deliverables=tuple(deliverables), **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Worked examples (reference §2.5), with the explicit reference coefficients
# --------------------------------------------------------------------------------------------------


def test_implementation_low_one_new_py_predicts_3424_and_floor_8192() -> None:
    est, decision = te.plan_call(features("implementation", "low", "examples/u/string_helper.py"), REFERENCE)
    assert est.predicted_output_tokens == 3424  # (634 + 2000) x 1.3
    assert decision.selected_budget == 8192  # 3424 x 1.2 = 4108 < floor
    assert decision.actual_max_tokens == 8192


def test_docs_low_one_new_md_predicts_2600_and_floor_4096() -> None:
    est, decision = te.plan_call(features("docs", "low", "examples/u/README.md"), REFERENCE)
    assert est.predicted_output_tokens == 2600  # (1500 + 500) x 1.3
    assert decision.selected_budget == 4096  # 2600 x 1.2 = 3120 < floor
    assert decision.actual_max_tokens == 4096


def test_missing_group_uses_default_overhead_like_the_originals_tests_phases() -> None:
    without_tests = dataclasses.replace(
        REFERENCE, phase_overhead={k: v for k, v in REFERENCE.phase_overhead.items() if k[0] != "tests"}
    )
    est, decision = te.plan_call(features("tests", "low", "tests/test_x.py"), without_tests)
    assert est.predicted_output_tokens == 4420  # (2000 + 1400) x 1.3
    assert decision.selected_budget == 6144  # 5304 < tests/low floor


def test_tests_low_uses_the_rekeyed_testing_row() -> None:
    est, decision = te.plan_call(features("tests", "low", "tests/test_x.py"), REFERENCE)
    assert est.predicted_output_tokens == int((915 + 1400) * 1.3)
    assert decision.selected_budget == 6144


def test_buffer_wins_over_floor_when_prediction_is_large() -> None:
    deliverables = [f"pkg/m{i}.py" for i in range(4)]
    est, decision = te.plan_call(features("implementation", "medium", *deliverables), REFERENCE)
    assert est.predicted_output_tokens == int((1176 + 4 * 2000) * 1.3)
    assert decision.selected_budget == int(est.predicted_output_tokens * 1.2)


def test_explicit_factor_replaces_floor_and_buffer() -> None:
    coeffs = dataclasses.replace(REFERENCE, budget_factors={("docs", "low"): 1.5})
    est, decision = te.plan_call(features("docs", "low", "README.md"), coeffs)
    assert decision.calibrated
    assert decision.selected_budget == math.ceil(2600 * 1.5)


# --------------------------------------------------------------------------------------------------
# Normalisation at the estimator's entry (explicit coefficients)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_category", "raw_complexity", "category", "complexity"),
    [
        ("tests", "low", "tests", "low"),
        ("testing", "low", "tests", "low"),
        ("docs", "low", "docs", "low"),
        ("documentation", "low", "docs", "low"),
        ("IMPLEMENT_FEATURE", "medium", "implementation", "medium"),
        ("implementation", "MEDIUM", "implementation", "medium"),
        ("Implementation", "Low", "implementation", "low"),
        ("implementation", "SIMPLE", "implementation", "low"),
        ("implementation", "MEDIUM-HIGH", "implementation", "high"),
    ],
)
def test_spellings_reach_the_same_group(raw_category: str, raw_complexity: str, category: str, complexity: str) -> None:
    deliverable = "docs/guide.md" if category == "docs" else ("tests/test_a.py" if category == "tests" else "pkg/a.py")
    est = te.estimate(features(raw_category, raw_complexity, deliverable), REFERENCE)
    canonical = te.estimate(features(category, complexity, deliverable), REFERENCE)
    assert est.group == (category, complexity)
    assert est.predicted_output_tokens == canonical.predicted_output_tokens
    assert est.category_known and est.complexity_known
    assert (est.raw_category, est.raw_complexity) == (raw_category, raw_complexity)


@pytest.mark.parametrize("category", ["doc_synthesis", "doc_sot_update"])
def test_doc_model_categories_are_kept(category: str) -> None:
    est = te.estimate(features(category, "low", "src/a.py"), REFERENCE)
    assert est.category == category


def test_unknown_category_is_kept_flagged_and_uses_default_overhead() -> None:
    est = te.estimate(features("Quantum_Widgets", "low", "pkg/a.py"), REFERENCE)
    assert est.category == "quantum_widgets"
    assert not est.category_known
    assert est.predicted_output_tokens == int((2000 + 2000) * 1.3)


def test_unknown_complexity_is_kept_and_flagged() -> None:
    est = te.estimate(features("implementation", "galactic", "pkg/a.py"), REFERENCE)
    assert est.complexity == "galactic"
    assert not est.complexity_known


def test_pure_doc_phase_is_relabelled_docs() -> None:
    est = te.estimate(features("implementation", "low", "docs/a.md", "docs/b.md"), REFERENCE)
    assert est.category == "docs"


def test_sot_file_uses_the_sot_model() -> None:
    est = te.estimate(features("docs", "low", "CHANGELOG.md"), REFERENCE)
    assert est.category == "doc_sot_update"
    assert est.sot_file_name == "CHANGELOG.md"
    assert est.predicted_output_tokens == int((3000 + 900 + int(0.15 * 900)) * 1.3)


def test_examples_word_alone_does_not_trigger_doc_synthesis() -> None:
    est = te.estimate(features("docs", "low", "README.md", description="README with an example per function"),
                      REFERENCE)
    assert est.model == "overhead_plus_marginal"


def test_modify_of_existing_file_scales_by_file_complexity() -> None:
    big = FileStats(loc=600, import_lines=20, max_indent=20)
    est = te.estimate(features("implementation", "low", "pkg/a.py", existing_files={"pkg/a.py": big}), REFERENCE)
    assert est.deliverable_counts == {"backend:modify": 1}
    assert est.predicted_output_tokens == int((634 + 700 * 2.0) * 1.3)


def test_create_verb_marks_an_existing_file_new() -> None:
    stats = FileStats(loc=10, import_lines=0, max_indent=4)
    est = te.estimate(features("implementation", "low", "Create pkg/a.py", existing_files={"pkg/a.py": stats}),
                      REFERENCE)
    assert est.deliverable_counts == {"backend:new": 1}


def test_address_py_is_not_new_because_of_its_name() -> None:
    stats = FileStats(loc=10, import_lines=0, max_indent=4)
    est = te.estimate(features("implementation", "low", "pkg/address.py", existing_files={"pkg/address.py": stats}),
                      REFERENCE)
    assert est.deliverable_counts == {"backend:modify": 1}


# --------------------------------------------------------------------------------------------------
# Invariants that hold for ANY sane coefficient set (run with the module's current literals)
# --------------------------------------------------------------------------------------------------

CURRENT = te.current_coefficients()


def _sample_phases() -> list[PhaseFeatures]:
    phases = []
    for category in CATEGORIES:
        for complexity in COMPLEXITIES:
            phases.append(features(category, complexity, "pkg/module.py"))
            phases.append(features(category, complexity, "tests/test_module.py", "tests/conftest.py"))
            phases.append(features(category, complexity, "docs/guide.md"))
    return phases


@pytest.mark.parametrize("phase", _sample_phases(), ids=lambda f: f"{f.category}-{f.complexity}-{len(f.deliverables)}")
def test_ceiling_invariants_hold_with_current_coefficients(phase: PhaseFeatures) -> None:
    est, decision = te.plan_call(phase, CURRENT)
    assert est.predicted_output_tokens > 0
    factor = CURRENT.budget_factors.get(est.group)
    if factor is None:
        assert decision.selected_budget >= te.base_budget(est.category, est.complexity, CURRENT)
        assert not decision.calibrated
    else:
        expected = min(max(exact_factor_ceiling(est.predicted_output_tokens, factor), te.MIN_FACTOR_CEILING),
                       te.MAX_OUTPUT_TOKENS)
        assert decision.selected_budget == expected
        assert decision.calibrated
    assert decision.selected_budget <= te.MAX_OUTPUT_TOKENS
    assert decision.selected_budget <= decision.actual_max_tokens <= te.MAX_OUTPUT_TOKENS


@pytest.mark.parametrize("phase", _sample_phases()[:12], ids=lambda f: f"{f.category}-{f.complexity}-{len(f.deliverables)}")
def test_every_contribution_is_recorded(phase: PhaseFeatures) -> None:
    _, decision = te.plan_call(phase, CURRENT, escalated_to=20000)
    names = [c.name for c in decision.contributions]
    assert names[0] == "predicted"
    assert "selected_budget" in names
    assert all(c.detail for c in decision.contributions)
    after = decision.contributions[names.index("selected_budget") + 1 :]
    if decision.actual_max_tokens != decision.selected_budget:
        assert after and after[-1].value == decision.actual_max_tokens
    assert decision.as_records()[0]["name"] == "predicted"


@pytest.mark.parametrize("factor", [0.01, 0.9, 1.7, 50.0])
def test_factor_groups_are_clamped(factor: float) -> None:
    phase = features("implementation", "medium", "pkg/a.py")
    group = te.estimate(phase, CURRENT).group
    coeffs = dataclasses.replace(CURRENT, budget_factors={**CURRENT.budget_factors, group: factor})
    est, decision = te.plan_call(phase, coeffs, model_max_output=30000)
    raw = exact_factor_ceiling(est.predicted_output_tokens, factor)
    assert decision.selected_budget == min(max(raw, te.MIN_FACTOR_CEILING), 30000)
    assert te.MIN_FACTOR_CEILING <= decision.actual_max_tokens <= 30000


def test_factor_ceiling_adds_no_token_through_floating_point() -> None:
    """600 × 1.11 is 666 exactly, but 666.0000000000001 in floating point: the ceiling must be 666."""
    phase = features("implementation", "medium", "pkg/a.py")
    est = dataclasses.replace(te.estimate(phase, CURRENT), predicted_output_tokens=600)
    coeffs = dataclasses.replace(CURRENT, budget_factors={est.group: 1.11})
    assert 600 * 1.11 > 666  # the floating-point product this test is about
    assert te.decide_ceiling(est, phase, coeffs).selected_budget == 666


def test_module_factor_groups_follow_their_factor() -> None:
    for (category, complexity), factor in CURRENT.budget_factors.items():
        phase = features(category, complexity, "docs/a.md" if category in ("docs",) else "pkg/a.py")
        est, decision = te.plan_call(phase, CURRENT)
        if est.group != (category, complexity):
            continue
        raw = exact_factor_ceiling(est.predicted_output_tokens, factor)
        assert decision.selected_budget == min(max(raw, te.MIN_FACTOR_CEILING), te.MAX_OUTPUT_TOKENS)


@pytest.mark.parametrize(
    ("selected", "ceiling", "used", "source", "base"),
    [
        (8192, 8192, 8192, "selected_budget", 8192),
        (4096, 6000, 5990, "actual_max_tokens", 6000),
        (4096, 4096, 7000, "tokens_used", 7000),
        (60000, 60000, 60000, "selected_budget", 60000),
    ],
)
def test_escalation_is_x125_of_the_largest_base_capped(selected: int, ceiling: int, used: int, source: str, base: int) -> None:
    esc = te.escalate(selected_budget=selected, actual_max_tokens=ceiling, tokens_used=used, complexity="low")
    assert (esc.base_source, esc.base_value) == (source, base)
    assert esc.retry_max_tokens == min(int(base * 1.25), 64000)


def test_escalation_without_any_base_uses_the_complexity_default() -> None:
    esc = te.escalate(selected_budget=0, actual_max_tokens=0, tokens_used=0, complexity="HIGH")
    assert esc.base_source == "complexity_default"
    assert esc.retry_max_tokens > esc.base_value > 0


def test_escalated_ceiling_is_recorded_and_capped_by_the_model() -> None:
    phase = features("implementation", "low", "pkg/a.py")
    _, first = te.plan_call(phase, CURRENT)
    retry = te.escalate(selected_budget=first.selected_budget, actual_max_tokens=first.actual_max_tokens,
                        tokens_used=first.actual_max_tokens, complexity="low").retry_max_tokens
    _, second = te.plan_call(phase, CURRENT, escalated_to=retry)
    assert second.actual_max_tokens == max(first.actual_max_tokens, retry)
    assert second.selected_budget == first.selected_budget
    assert any(c.name == "escalation" for c in second.contributions) or first.actual_max_tokens >= retry
    _, capped = te.plan_call(phase, CURRENT, escalated_to=retry, model_max_output=1000)
    assert capped.actual_max_tokens == 1000


@pytest.mark.parametrize(("category", "path"), [("implementation", "pkg/m{}.py"), ("tests", "tests/test_m{}.py"),
                                                ("configuration", "conf/c{}.yaml")])
@pytest.mark.parametrize("complexity", COMPLEXITIES)
def test_monotonic_in_deliverable_count(category: str, path: str, complexity: str) -> None:
    previous = (0, 0)
    for n in range(1, 10):
        est, decision = te.plan_call(features(category, complexity, *[path.format(i) for i in range(n)]), CURRENT)
        current = (est.predicted_output_tokens, decision.selected_budget)
        assert current[0] >= previous[0] and current[1] >= previous[1], n
        previous = current


def test_estimator_touches_no_filesystem(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n" * 400)
    phase = features("implementation", "medium", "pkg/a.py", "pkg/b.py", scope_paths=("pkg/",))
    before = te.plan_call(phase, CURRENT)

    def forbidden(*_a: object, **_k: object) -> object:
        raise AssertionError("the estimator must not touch the filesystem")

    monkeypatch.setattr(builtins, "open", forbidden)
    monkeypatch.setattr(os, "stat", forbidden)
    monkeypatch.setattr(os.path, "exists", forbidden)
    monkeypatch.setattr(pathlib.Path, "stat", forbidden)
    monkeypatch.setattr(pathlib.Path, "exists", forbidden)
    monkeypatch.setattr(pathlib.Path, "is_file", forbidden)
    after = te.plan_call(phase, CURRENT)
    assert after[0].deliverable_counts == {"backend:new": 2}  # an existing file in cwd is not "modify"
    assert after[0].predicted_output_tokens == before[0].predicted_output_tokens
    assert after[1] == before[1]


def test_no_deliverables_uses_the_complexity_default() -> None:
    est, decision = te.plan_call(features("implementation", "high"), CURRENT)
    assert est.model == "no_deliverables"
    assert decision.selected_budget >= est.predicted_output_tokens > 0


def test_features_record_round_trips() -> None:
    phase = features("testing", "MEDIUM", "tests/test_a.py", "Create pkg/a.py", description="d",
                     scope_paths=("pkg/",), read_only_context=("pkg/b.py",),
                     existing_files={"pkg/b.py": FileStats(10, 2, 4)})
    est = te.estimate(phase, CURRENT)
    record = te.features_record(phase, est)
    assert te.features_from_record(record) == phase
    assert te.estimate(te.features_from_record(record), CURRENT) == est


def test_coefficient_tables_have_one_string_pair_key_per_entry() -> None:
    for table in (te.PHASE_OVERHEAD, te.TOKEN_WEIGHTS, te.BASE_BUDGET_BY_CATEGORY, te.BUDGET_FACTORS):
        for key, value in table.items():
            assert isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)
            assert isinstance(value, int | float) and value > 0


@pytest.mark.parametrize("name", ["PHASE_OVERHEAD", "TOKEN_WEIGHTS"])
def test_overheads_and_weights_are_whole_tokens_of_at_least_one(name: str) -> None:
    """The calibration fit keeps every overhead and weight ≥ 1 (a 0 would predict nothing for a group)."""
    for key, value in getattr(te, name).items():
        assert isinstance(value, int) and not isinstance(value, bool), (name, key, value)
        assert value >= 1, (name, key, value)
    assert isinstance(te.DEFAULT_PHASE_OVERHEAD, int) and te.DEFAULT_PHASE_OVERHEAD >= 1


def test_budget_factors_are_finite_positive_and_written_with_three_decimals() -> None:
    for key, factor in te.BUDGET_FACTORS.items():
        assert isinstance(factor, float) and math.isfinite(factor) and factor > 0, (key, factor)
        assert Fraction(repr(factor)) * 1000 == round(factor * 1000), (key, factor)


# --- adaptive budgets (the reviewed part of ACI; a PR that breaks these fails verification) -------------


def test_adaptive_settings_name_only_known_aci_parameters() -> None:
    assert set(te.ADAPTIVE_SETTINGS) <= {("aci", "target_alpha"), ("aci", "gamma")}
    if te.ADAPTIVE_BUDGET_FACTORS:
        assert set(te.ADAPTIVE_SETTINGS) == {("aci", "target_alpha"), ("aci", "gamma")}
    target = te.ADAPTIVE_SETTINGS.get(("aci", "target_alpha"), 0.05)
    gamma = te.ADAPTIVE_SETTINGS.get(("aci", "gamma"), 0.005)
    assert 0 < target < 0.5 and 0 < gamma < 1


def test_adaptive_curves_are_monotone_and_bounded_by_what_ships() -> None:
    curves = te.parse_adaptive_curves(te.ADAPTIVE_BUDGET_FACTORS)
    target = te.ADAPTIVE_SETTINGS.get(("aci", "target_alpha"))
    for group, curve in curves.items():
        assert len(curve.alphas) >= 2 and all(0 < a < 0.5 for a in curve.alphas), group
        assert list(curve.alphas) == sorted(set(curve.alphas)), group
        assert all(f > 0 for f in curve.factors), group
        assert all(a >= b for a, b in pairwise(curve.factors)), f"{group}: factor must fall with alpha"
        # the curve refines a calibrated group, and at the target it is that group's BUDGET_FACTORS value:
        # a group whose runtime state is missing gets exactly the static ceiling
        assert group in te.BUDGET_FACTORS, group
        assert target is not None and curve.alphas[0] <= target <= curve.alphas[-1], group
        assert curve.factor_at(target) == pytest.approx(te.BUDGET_FACTORS[group], abs=1e-9), group
