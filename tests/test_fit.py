"""The joint coefficient fit: its linear program against an independent primal solve, and its invariants."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.optimize import linprog

from autopack import token_estimator as te
from autopack.calibration import fit as fit_module
from autopack.calibration.fit import coefficient_bounds, fit_coefficients
from autopack.calibration.samples import build_sample_set, columns_from_records

from synthetic_telemetry import Truth, simulate


def _primal_objective(x, target, observed, theta0, margin, lo, hi) -> float:  # type: ignore[no-untyped-def]
    """The documented objective, solved in its primal form (one u, v per observed row, h per censored)."""
    n, p = x.shape
    lam = fit_module.PULL_KAPPA * margin * np.maximum(x.sum(axis=0), 1.0)
    obs, cen = np.flatnonzero(observed), np.flatnonzero(~observed)
    # variables θ | u, v (observed) | h (censored) | a, b (pull)
    nv = p + 2 * obs.size + cen.size + 2 * p
    c = np.concatenate([np.zeros(p), np.full(2 * obs.size, 0.5), np.full(cen.size, 0.5), lam, lam])
    a_eq = np.zeros((obs.size + p, nv))
    a_eq[: obs.size, :p] = margin * x[obs]
    a_eq[np.arange(obs.size), p + np.arange(obs.size)] = 1
    a_eq[np.arange(obs.size), p + obs.size + np.arange(obs.size)] = -1
    a_eq[obs.size:, :p] = np.eye(p)
    a_eq[obs.size:, nv - 2 * p: nv - p] = -np.eye(p)
    a_eq[obs.size:, nv - p:] = np.eye(p)
    a_ub = np.zeros((cen.size, nv))
    a_ub[:, :p] = -margin * x[cen]
    a_ub[np.arange(cen.size), p + 2 * obs.size + np.arange(cen.size)] = -1
    bounds = list(zip(lo, hi, strict=True)) + [(0, None)] * (nv - p)
    res = linprog(c, A_ub=a_ub, b_ub=-target[cen], A_eq=a_eq, b_eq=np.r_[target[obs], theta0], bounds=bounds,
                  method="highs")
    assert res.status == 0
    return float(res.fun)


def test_the_dual_linear_program_reaches_the_primal_optimum() -> None:
    rng = np.random.default_rng(0)
    n, p = 300, 6
    x = np.zeros((n, p))
    x[np.arange(n), rng.integers(0, 3, n)] = 1.0  # three overhead groups
    x[:, 3:] = rng.integers(0, 3, (n, 3))  # three weight counts
    theta_true = np.array([300.0, 900.0, 1500.0, 1400.0, 600.0, 900.0])
    target = 1.3 * x @ theta_true * np.exp(0.3 * rng.standard_normal(n))
    observed = rng.random(n) > 0.1
    theta0 = theta_true * np.array([2.5, 1.0, 0.7, 1.1, 1.0, 0.9])
    lo, hi = coefficient_bounds(theta0, np.zeros(p, dtype=bool))
    theta = fit_module._solve(x, target, observed, theta0, 1.3, lo, hi)  # noqa: SLF001
    assert theta is not None and np.all(theta >= lo - 1e-6) and np.all(theta <= hi + 1e-6)
    lam = fit_module.PULL_KAPPA * 1.3 * np.maximum(x.sum(axis=0), 1.0)
    resid = target - 1.3 * x @ theta
    ours = (0.5 * np.abs(resid[observed]).sum() + 0.5 * np.maximum(resid[~observed], 0).sum()
            + float(lam @ np.abs(theta - theta0)))
    assert ours == pytest.approx(_primal_objective(x, target, observed, theta0, 1.3, lo, hi), rel=1e-7)


def _overhead_free_data() -> tuple[object, te.Coefficients]:
    """implementation/low phases whose true length has no fixed part at all: the data ask for overhead 0."""
    truth = Truth(base={("implementation", "low"): 0.0, ("implementation", "medium"): 700.0},
                  per_kind={"backend": 2000.0}, sigma=0.15)
    specs = (("implementation", "low", ("src/a.py",)), ("implementation", "low", ("src/a.py", "src/b.py")),
             ("implementation", "medium", ("src/c.py",)), ("implementation", "medium", ("src/c.py", "src/d.py")))
    rows = simulate(200, seed=5, specs=specs, truth=truth)
    return build_sample_set(columns_from_records(rows)), te.current_coefficients()


def test_the_overhead_is_fitted_relative_to_the_factor_and_not_driven_to_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """The old level fit proposed PHASE_OVERHEAD implementation/low 634 → ~0 unbounded (and halved it every run
    in a closed loop); fitted with a free scale (the factor's), the data's intercept is kept, unbounded too."""
    samples, current = _overhead_free_data()
    monkeypatch.setattr(fit_module, "MAX_STEP", 1e9)
    result = fit_coefficients(samples, np.arange(samples.n), current, free_weights=False, confidence_threshold=0.7)
    assert 250 <= result.coefficients.phase_overhead[("implementation", "low")] < 634


def test_the_fit_keeps_every_coefficient_at_least_1_and_within_x2_of_today() -> None:
    samples, current = _overhead_free_data()
    result = fit_coefficients(samples, np.arange(samples.n), current, free_weights=True, confidence_threshold=0.7)
    for table, old in ((result.coefficients.phase_overhead, current.phase_overhead),
                       (result.coefficients.token_weights, current.token_weights)):
        for key, value in table.items():
            before = old.get(key, current.default_phase_overhead)
            assert isinstance(value, int) and value >= 1, (key, value)
            assert before / fit_module.MAX_STEP <= value <= before * fit_module.MAX_STEP, (key, before, value)


def test_refitting_on_its_own_output_does_not_walk_the_overhead_to_a_bound() -> None:
    """Week after week on the same law the overhead settles instead of halving each run (the closed loop's
    1176 → 588 → … → 3)."""
    samples, current = _overhead_free_data()
    values = []
    for _ in range(4):
        result = fit_coefficients(samples, np.arange(samples.n), current, free_weights=False, confidence_threshold=0.7)
        values.append(result.coefficients.phase_overhead[("implementation", "low")])
        current = dataclasses.replace(current, phase_overhead=result.coefficients.phase_overhead)
    steps = np.abs(np.diff([634, *values]))
    assert np.all(steps[1:] < steps[:-1]) and min(values) > 250, values  # converging on the data's ≈ 330


def test_an_overhead_its_calls_cannot_tell_from_the_factor_is_kept() -> None:
    """Every implementation/low phase has one file: overhead and factor are one number; today's stays."""
    truth = Truth(base={("implementation", "low"): 0.0}, per_kind={"backend": 2000.0}, sigma=0.15)
    rows = simulate(120, seed=5, specs=(("implementation", "low", ("src/a.py",)),), truth=truth)
    samples, current = build_sample_set(columns_from_records(rows)), te.current_coefficients()
    result = fit_coefficients(samples, np.arange(samples.n), current, free_weights=False, confidence_threshold=0.7)
    assert result.coefficients.phase_overhead[("implementation", "low")] == current.phase_overhead[
        ("implementation", "low")]
    assert ("implementation", "low") in result.kept_overheads


def test_a_zero_overhead_today_is_lifted_to_1() -> None:
    samples, current = _overhead_free_data()
    broken = dataclasses.replace(current, phase_overhead={**current.phase_overhead, ("implementation", "low"): 0})
    result = fit_coefficients(samples, np.arange(samples.n), broken, free_weights=False, confidence_threshold=0.7)
    assert result.coefficients.phase_overhead[("implementation", "low")] >= 1


def test_coefficient_bounds_are_integers_and_frozen_values_stay() -> None:
    lo, hi = coefficient_bounds(np.array([634.0, 1.0, 3.0, 2000.0]), np.array([False, False, False, True]))
    assert lo.tolist() == [317.0, 1.0, 2.0, 2000.0] and hi.tolist() == [1268.0, 2.0, 6.0, 2000.0]
