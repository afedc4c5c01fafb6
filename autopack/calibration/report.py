"""The calibration's files: markdown report, JSON, and the PNG plot (matplotlib, Agg backend).

The markdown keeps the original's sections and table columns (Summary, Recommendations, Detailed
Results: Category | Complexity | Samples | Avg Actual | Avg Est | Median Ratio | Confidence | Proposed
Mult, Notes) so its users find their way, then adds what the original lacked: collection targets,
success metrics, the waste figures it only printed to the console, budget factors with how each was
obtained (method, assumption, extrapolation), the backtest with truncation as an interval and whether the
held-out calls are enough to be evidence, the gate with a verdict per change (TOKEN_WEIGHTS included),
every coefficient change old → new, the data's provider/model mix, and the doc-phase truncation list.
Verdicts, the gate's sentence and the drift table come from ``story``, as in the pull request body. The
plot shows n per group, today's ceiling beside the proposed one, the held-out calls apart from the fitted
ones, and says SIMULATED DATA in its title when the data is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autopack.calibration import drift, story
from autopack.calibration.result import CalibrationResult, GroupEntry, Metadata, Sources, Truncation
from autopack.calibration.samples import DOCS_ROWS_LIMIT
from autopack.logging import redact

MAX_DOC_ROWS = 30
PLOT_POINTS_PER_GROUP = 300


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "∞"
        return f"{value:,.{digits}f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_f(v, digits) for v in value) + "]"
    return str(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _check(ok: bool) -> str:
    return "✅" if ok else "❌"


def _shipped_factors(result: CalibrationResult) -> dict[tuple[str, str], float]:
    """Each group's budget factor after the pull request: a bounded step or a step toward α is not the refit's."""
    return {tuple(c.key): float(c.new) for c in result.proposed_changes  # type: ignore[misc]
            if c.coefficient == "BUDGET_FACTORS" and c.new is not None}


def _shipped_cell(g: GroupEntry, shipped: dict[tuple[str, str], float]) -> str:
    factor = shipped.get((g.category, g.complexity))
    return "❌" if factor is None else f"✅ {factor:.3f}"


def render_markdown(result: CalibrationResult, plot_name: str | None) -> str:
    md = result.metadata
    groups = result.groups
    threshold = md.confidence_threshold
    eligible = [g for g in groups if g.n >= md.min_samples]
    high = sorted((g for g in eligible if (g.confidence or 0) >= threshold), key=lambda g: -(g.confidence or 0))
    counts = md.sample_counts
    span = md.time_span
    holdout = "–" if md.holdout_fraction is None else f"{md.holdout_fraction:.0%}"
    lines: list[str] = [
        "# Token Estimator Calibration Report",
        "",
        f"**Generated**: {md.generated_at}",
        f"**Database id**: `{md.db_id}`",
        f"**Method**: `{md.method_version}` (target truncation α = {md.target_truncation}, "
        f"hold-out {holdout} newest, min samples {md.min_samples}, "
        f"confidence threshold {threshold}"
        + ("" if md.max_rise_per_run is None else f", a lowering at most +{md.max_rise_per_run * 100:g} pp of "
           "estimated truncation a run")
        + ")",
        f"**Data**: {span.start if span else '?'} → {span.end if span else '?'}, {len(md.run_ids)} run(s)"
        + (f", filtered to {', '.join(md.include_run_ids)}" if md.include_run_ids else "")
        + f"; window: {md.window()}",
        f"**Source**: {_sources_line(md.sources)}",
        "",
        "## Summary",
        "",
        f"- **Total samples**: {md.total_samples} first attempts ({counts.observed or 0} complete, "
        f"{counts.censored or 0} truncated kept as censored); {_retries_line(md)}",
        f"- **Samples in qualifying groups** (n ≥ {md.min_samples}): {sum(g.n for g in eligible)}",
        f"- **Groups analysed**: {len(groups)} ({len(eligible)} with ≥ {md.min_samples} samples)",
        f"- **High-confidence groups** (confidence ≥ {threshold}): {len(high)}",
        f"- **Gate**: {'PASSED' if result.gate.passed else 'not passed'} — "
        f"{len(result.proposed_changes)} proposed change(s). {story.gate_sentence(result)}",
        "",
    ]
    lines += _targets_section(result)
    lines += _metrics_section(result)
    shipped = _shipped_factors(result)
    lines += ["## Recommendations", ""]
    if not high:
        lines += ["No high-confidence groups.", ""]
    for g in high:
        m = g.median_ratio
        if m is None:
            action = "median not identifiable (censoring)"
        elif m > 1.2:
            action = f"increase by {(m - 1) * 100:.0f}% (underestimating)"
        elif m < 0.8:
            action = f"decrease by {(1 - m) * 100:.0f}% (overestimating)"
        else:
            action = "within ±20% (no change needed)"
        lines += [
            f"### {g.category}/{g.complexity}",
            "",
            f"- **Samples**: {g.n} ({g.n_censored} censored)",
            f"- **Confidence**: {_f(g.confidence)} (original's score: {_f(g.original_confidence)})",
            f"- **Current avg estimate**: {_f(g.avg_predicted, 0)} tokens",
            f"- **Actual avg**: {_f(g.avg_actual, 0)} tokens",
            f"- **Median ratio** (actual/predicted): {_f(g.median_ratio, 3)} "
            f"(95% CI {_f(g.median_ratio_ci, 3)})",
            f"- **Proposed multiplier** (the original's rule): {_f(g.median_ratio, 3)}",
            f"- **Full refit's budget factor**: {_f(g.budget_factor, 3)} ({_method(g)}; today's ceiling ≈ "
            f"{_f(g.current_ceiling_factor, 2)} × the refit's prediction, median over its calls)",
            f"- **Ships**: {_ships_line(g, shipped)}",
            f"- **The original's action** (its median rule, not what ships): {action}",
            "",
        ]
    lines += [
        "## Detailed Results",
        "",
        "| Category | Complexity | Samples | Avg Actual | Avg Est | Median Ratio | Confidence | Proposed Mult |",
        "|----------|------------|---------|------------|---------|--------------|------------|---------------|",
    ]
    for g in groups:
        lines.append(
            f"| {g.category} | {g.complexity} | {g.n} | {_f(g.avg_actual, 0)} | "
            f"{_f(g.avg_predicted, 0)} | {_f(g.median_ratio, 3)} | {_f(g.confidence, 3)} | "
            f"{_f(g.median_ratio, 3)} |"
        )
    lines += ["", "### Budget factors (each group from its own calls)", ""]
    lines += [
        "| Category | Complexity | n | Censored | Median ratio [95% CI] | Today's ceiling ÷ refit's prediction (median) | Budget factor "
        "[90% interval], full refit | Method | Confidence | Original confidence | Held-out calls | Shipped factor |",
        "|---|---|---:|---:|---|---:|---|---|---:|---:|---|---|",
    ]
    for g in groups:
        held = (g.backtest.n if g.backtest else None) or 0
        thin = "" if g.backtest and g.backtest.evidence else " (thin)"
        lines.append(
            f"| {g.category} | {g.complexity} | {g.n} | {g.n_censored} | {_f(g.median_ratio, 3)} "
            f"{_f(g.median_ratio_ci, 3)} | {_f(g.current_ceiling_factor, 2)} | {_f(g.budget_factor, 3)} "
            f"{_f(g.factor_interval, 3)} | {_method(g)} | {_f(g.confidence)} | {_f(g.original_confidence)} | "
            f"{held}{thin if held else ''} | {_shipped_cell(g, shipped)} |"
        )
    notes = [g for g in groups if g.factor_note or g.assumption]
    if notes:
        lines += [""]
        for g in notes:
            parts = [p for p in (g.factor_note, f"assumes {g.assumption}" if g.assumption else "") if p]
            lines.append(f"- {g.category}/{g.complexity}: " + "; ".join(parts))
    lines += [f"- {g.category}/{g.complexity}: {g.confidence_note}" for g in groups if g.confidence_note]
    lines += [f"- {g.category}/{g.complexity}: {g.step_toward_alpha.verdict}" for g in groups
              if g.gate_direction == "raise" and g.step_toward_alpha]
    evidence_from = "–" if md.min_evidence_calls is None else md.min_evidence_calls
    lines += ["", f"Held-out calls are *evidence* from {evidence_from} on (at α = "
              f"{md.target_truncation}): from there a budget truncating 3α is caught ≥ 90 % of the time. "
              "Fewer is marked *thin*: the group may then ship only if it truncates no more held-out calls than "
              "today's ceilings, and its guarantee rests on its factor's method."]
    lines += _waste_section(groups)
    lines += _changes_section(result)
    lines += _backtest_section(result)
    lines += _drift_section(result)
    lines += _docs_section(result)
    if plot_name:
        lines += ["## Plot", "", f"![actual / predicted per group, budget factor marked]({plot_name})", ""]
    lines += _quality_section(result)
    lines += [
        "## Notes",
        "",
        "- **Ratios named**: `median_ratio` = actual / predicted (the original's \"median ratio\"); "
        "`overestimate_ratio` = predicted / actual (the DB's `waste_ratio` column); `ceiling_waste` = ceiling "
        "(actual_max_tokens) / actual.",
        "- Truncated calls are kept as right-censored samples (true length ≥ the ceiling), not dropped; "
        "medians and quantiles use Kaplan–Meier where a group has any.",
        "- Budget factor = split-conformal upper quantile of log(actual / predicted) at α; the ceiling for a "
        "calibrated group becomes predicted × factor (replacing floor and buffer). Factors are computed on "
        "the predictions of the *proposed* coefficients, so they only make sense together with them.",
        "- Confidence = P(realised truncation ≤ 2α) for the factor, fixed in advance: the Beta law of conformal "
        "coverage (km_conformal), the normal-theory law of the prediction bound (small_group_bound), at most "
        "0.5 for an extrapolation; the original's score 0.6·min(1, n/12) + 0.4/(1+σ) is shown beside it for "
        "comparison only.",
        "- Each group's factor comes from its own calls only; no group borrows a pool's quantile or confidence.",
        "- Escalated retries (a call made again with a raised ceiling after a truncation) are not samples: their "
        "outputs come from the tail above the old cap. The truncated first attempt is kept, censored.",
        "- Jargon: a *one-sided interval* bounds from one side only (here: how high truncation can be); the "
        "*one-sided exact binomial test* asks whether the held-out truncations are too many for a rate ≤ α "
        "(small p = too many); *Kupiec's* test is the two-sided likelihood-ratio version (rate = α); the "
        "*pinball loss* scores a ceiling as a (1−α) quantile (lower is better).",
        "- Nothing is applied automatically: the JSON `proposed_changes` feeds a reviewed pull request.",
        "",
    ]
    return redact("\n".join(lines) + "\n")


def _ships_line(g: GroupEntry, shipped: dict[tuple[str, str], float]) -> str:
    """What merging ships for the group, which a bounded step or a step toward α makes differ from the refit."""
    factor = shipped.get((g.category, g.complexity))
    if factor is None:
        return "nothing (not proposed: " + ("; ".join(g.gate_reasons) or "no budget factor change") + ")"
    how = "a step toward α" if g.gate_direction == "raise" else (
        "the refit's factor" if g.budget_factor is not None and round(g.budget_factor, 3) == round(factor, 3)
        else "a bounded step from today's ceilings toward the refit's factor")
    return f"budget factor {factor:.3f} ({how})"


def _method(g: GroupEntry) -> str:
    method = g.factor_method or "none"
    return method + (", extrapolation" if g.extrapolation else "")


def _sources_line(sources: Sources | None) -> str:
    models = sources.models if sources else []
    if not sources or not models:
        return "provider/model not recorded"
    mix = ", ".join(f"{m.provider or '?'}/{m.model or '?'} ({m.samples:,})" for m in models)
    flag = {True: "SIMULATED data (not a real model)", False: "real provider calls", None: "unknown"}[
        sources.simulated]
    return f"{flag} — {mix}"


def _retries_line(md: Metadata) -> str:
    counts = md.sample_counts
    if md.retries_known is False:
        unknown = counts.rows_retries_unknown
        whose = (f"{unknown:,} rows come from a source that does not mark escalated retries (an import without "
                 "retry columns)" if unknown else "no escalation events read")
        return f"retries unknown ({whose}): none could be excluded"
    revealed, raised = counts.cut_calls_revealed_by_retry or 0, counts.cut_calls_raised_by_retry or 0
    told = (f"; {revealed} showed their cut call's need, {raised} raised its censoring to their ceiling"
            if revealed or raised else "")
    retries, repeats = md.retries_excluded or 0, counts.repeats_excluded or 0
    if repeats:
        return (f"{retries} retries excluded ({retries - repeats} escalated, {repeats} runs again of a phase whose "
                f"call was cut, which stays one sample; kept in the database, never fitted{told})")
    return f"{retries} escalated retries excluded (kept in the database, never fitted{told})"


def _targets_section(result: CalibrationResult) -> list[str]:
    t = result.collection_targets
    if t is None:
        return []
    lines = ["## Collection targets (seed)", "", "| Target | Needed | Have | Met |", "|---|---:|---:|---|"]
    for item in t.phase_targets:
        lines.append(f"| successful phases ({item.label}) | ≥ {item.target} | {t.successful_phases} | "
                     f"{_check(item.met)} |")
    for item in t.group_targets:
        lines.append(f"| groups with enough samples ({item.label}) | ≥ {item.target} | "
                     f"{t.groups_with_enough_samples} | {_check(item.met)} |")
    return lines + [""]


def _metrics_section(result: CalibrationResult) -> list[str]:
    s = result.success_metrics
    if s is None:
        return []
    lo, hi = s.median_ratio_range
    return [
        "## Success metrics (seed)",
        "",
        f"- {_check(s.success_events_at_least_half)} success=True events ≥ 50% "
        f"({_pct(s.success_events_ratio)})",
        f"- {_check(s.at_least_one_high_confidence_group)} calibration finds ≥ 1 high-confidence group "
        f"({s.high_confidence_groups})",
        f"- {_check(s.all_median_ratios_in_range)} median ratios within {lo}–{hi}× "
        f"({s.groups_median_in_range} of {s.groups_eligible} eligible groups)",
        f"- {_check(s.all_confidences_at_threshold)} confidence ≥ threshold in every eligible group "
        f"({s.high_confidence_groups} of {s.groups_eligible})",
        "",
    ]


def _waste_section(groups: Sequence[GroupEntry]) -> list[str]:
    lines = [
        "",
        "## Cost-aware analysis (ceiling waste, as recorded)",
        "",
        "The original printed these to the console only. `ceiling_waste` = actual_max_tokens (else "
        "selected_budget) / actual output; `overestimate_ratio` = predicted / actual.",
        "",
        "| Category | Complexity | Samples | Median overestimate_ratio | Median ceiling_waste | P90 ceiling_waste "
        "| Avg ceiling |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for g in groups:
        lines.append(
            f"| {g.category} | {g.complexity} | {g.n} | {_f(g.median_overestimate_ratio)} | "
            f"{_f(g.median_ceiling_waste)} | {_f(g.p90_ceiling_waste)} | {_f(g.avg_ceiling, 0)} |"
        )
    return lines + [""]


def _changes_section(result: CalibrationResult) -> list[str]:
    gate = result.gate
    lines = ["## Gate and proposed changes", "", f"**Gate: {'PASSED' if gate.passed else 'not passed'}**", "",
             story.gate_sentence(result), ""]
    shipped = [v for v in story.group_verdicts(result).values() if v.kind.ships]
    if shipped:
        lines += ["Verdicts (what ships, where its guarantee comes from, what confirms it):", ""]
        lines += [f"- {v.icon} {v.group[0]}/{v.group[1]}: {v.line()}" for v in shipped]
    not_raised = [f"- {line}" for line in story.docs_not_raised(result)]
    lines += not_raised
    if shipped or not_raised:
        lines += ["", "The gate's reasons, group by group:", ""]
    lines += [f"- {r}" for r in gate.reasons]
    weights = gate.weights
    if weights:
        lines += ["", f"**TOKEN_WEIGHTS** ({'changed' if weights.changed else 'unchanged'}): {weights.verdict}"]
    lines += [""]
    changes = result.proposed_changes
    if changes:
        lines += [
            f"| Coefficient | Key | Old | New | n | Confidence | {story.INTERVAL_COLUMN} | Held-out truncation "
            "[interval], shipped | Reserved/used, shipped | Verdict |",
            "|---|---|---:|---:|---:|---:|---|---|---:|---|",
        ]
        for c in changes:
            own = c.backtest
            bt = (own.shipped or own) if own is not None else None  # the group's shipped replay
            lines.append(
                f"| `{c.coefficient}` | `{c.key}` | {_f(c.old, 3)} | {_f(c.new, 3)} | {c.n} | "
                f"{_f(c.confidence)} | {_f(c.interval, 3 if c.coefficient == 'BUDGET_FACTORS' else 0)} | "
                f"{_interval(bt)} | {_f(bt.reserved_over_used if bt else None)} | {c.verdict or ''} |"
            )
        lines += ["", story.INTERVAL_NOTE, ""]
    fit = result.coefficient_fit
    lines += ["### Joint coefficient fit (all changes the fit made, old → new)", ""]
    if not fit:
        lines += [f"No coefficient changes ({result.metadata.fit_status}).", ""]
    else:
        lines += ["| Coefficient | Key | Old | New | Rows |", "|---|---|---:|---:|---:|"]
        for f in fit:
            lines.append(f"| `{f.coefficient}` | `{f.key}` | {_f(f.old)} | {_f(f.new)} | {f.n} |")
        lines.append("")
    return lines


def _interval(m: Truncation | None, n: int | None = None) -> str:
    """'1.0–2.0% (2–4/200)': the held-out truncation interval, lower end to upper end (``n``: when ``m`` has none)."""
    n = m.n if m is not None and m.n is not None else n
    if m is None or not n:
        return "–"
    low = m.truncations
    high = m.truncations if m.truncations_upper is None else m.truncations_upper
    span = m.truncation_interval or (m.truncation_rate, m.truncation_rate)
    rate = _pct(span[0]) if low == high else f"{_pct(span[0])}–{_pct(span[1])}"
    counts = f"{low}/{n}" if low == high else f"{low}–{high}/{n}"
    return f"{rate} ({counts})"


METHOD_LABELS = {
    "current": "today",
    "original_median": "original's median",
    "proposed": story.FULL_REFIT,
    "shipped": story.THIS_PR,
}


def _backtest_section(result: CalibrationResult) -> list[str]:
    bt = result.backtest
    present = {name: m for name in ("current", "shipped", "proposed", "original_median")
               if (m := getattr(bt, name)) is not None}
    methods = list(present)
    lines = ["## Backtest (older part fitted, newest held out)", ""]
    if not bt.test_n:
        return lines + ["No held-out calls (hold-out fraction 0 or too few samples).", ""]
    lines += [
        f"Fitted on the oldest {bt.train_n} calls, evaluated on the newest {bt.test_n} (from {bt.split_at}). "
        "`current` = ceilings today's token_estimator.py would choose; `shipped` = only the gated changes, i.e. "
        "**this pull request**; `proposed` = the full refit (fitted coefficients × budget factor for every group, "
        "gated or not); `original_median` = predicted × the group's median ratio (no floors). Truncation is an "
        "interval: a held-out call that was cut at its recorded ceiling counts as fitting for the lower end and "
        "as truncated for the upper end when the new ceiling lies above where it was cut; the gate tests the "
        "upper end.",
        "",
        "| Metric | " + " | ".join(f"`{m}` = {METHOD_LABELS[m]}" for m in methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    lines.append("| held-out truncation [lower–upper] | " + " | ".join(_interval(m) for m in present.values()) + " |")
    evidence_from = "–" if result.metadata.min_evidence_calls is None else result.metadata.min_evidence_calls
    rows = [
        ("n", "calls", 0),
        ("truncation_ci", "truncation 95% CI (Clopper–Pearson, lower end to upper end)", 3),
        ("binomial_p", "one-sided exact binomial p (rate ≤ α)", 3),
        ("evidence", f"enough held-out calls (≥ {evidence_from})", None),
        ("kupiec_p", "Kupiec p (rate = α, upper end)", 3),
        ("median_ceiling_over_actual", "median ceiling / actual", 2),
        ("p90_ceiling_over_actual", "p90 ceiling / actual", 2),
        ("reserved_over_used", "total reserved / total used", 2),
        ("pinball_loss", "pinball loss (tokens)", 1),
    ]
    for key, label, digits in rows:
        cells = [_f(getattr(m, key), digits or 0) for m in present.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "### Per-group held-out truncation", "",
              "| Category | Complexity | n | " + " | ".join(f"`{m}`: truncated / reserved÷used" for m in methods) + " |",
              "|---|---|---:|" + "---|" * len(methods)]
    for g in bt.groups:
        cells = [f"{_interval(gm, g.n)} / {_f(gm.reserved_over_used)}" if (gm := getattr(g, m)) is not None else "–"
                 for m in methods]
        thin = "" if g.current is not None and g.current.evidence else " (thin)"
        lines.append(f"| {g.category} | {g.complexity} | {g.n}{thin} | " + " | ".join(cells) + " |")
    return lines + [""]


def _drift_section(result: CalibrationResult) -> list[str]:
    """The markdown report's "Calibration under drift" section: the method in two sentences, then the table.

    Rows, labels and the note on coinciding rows come from ``story.drift_table``, as in the PR body.
    """
    md = result.metadata
    method = md.method or drift.DEFAULT_METHOD
    lines = ["## Calibration under drift", "", drift.describe_method(method, md.method_params), ""]
    summary = result.backtest.calibration_under_drift
    table = story.drift_table(result.backtest, method)
    if table is None or summary is None:
        return lines + ["No held-out calls: nothing to replay.", ""]
    spec, default = summary.feedback, drift.Feedback()
    lag = drift.Feedback(spec.lag_calls, default.first_token_seconds if spec.first_token_seconds is None
                   else spec.first_token_seconds,
                   default.seconds_per_token if spec.seconds_per_token is None else spec.seconds_per_token)
    lines += [
        f"Every method replayed on {summary.calls or 'the held-out calls'} with {table.basis} "
        "(delayed feedback: "
        f"{lag.describe()}; worst block = the worst of "
        f"{summary.bins}; `oracle` = each group's own quantile of these calls, in hindsight).",
        "",
        "| method | truncation | reserved / used | reserve ÷ oracle's | worst block | pinball ÷ oracle's |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in table.rows:
        m = row.metrics
        shown = f"**{row.label}**" if row.this_pr else row.label
        low, high = m.truncation_interval or (m.truncation_rate, m.truncation_rate)
        rate = "–" if low is None else (f"{100 * low:.1f} %" if high in (None, low)
                                         else f"{100 * low:.1f}–{100 * high:.1f} %")
        worst = m.worst_bin_truncation
        lines.append(
            f"| {shown} | {rate} | {_num3(m.reserved_over_used)} | "
            f"{_num3(m.reserved_vs_oracle)} | {'–' if worst is None else f'{100 * worst:.1f} %'} | "
            f"{_num3(m.pinball_vs_oracle)} |"
        )
    if table.note:
        lines += ["", table.note]
    return lines + [""]


def _num3(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _docs_section(result: CalibrationResult) -> list[str]:
    rows = result.docs_truncation
    lines = [
        "## Doc-phase truncation",
        "",
        "Documentation calls (docs-like category, or a phase id with doc/readme), largest outputs first; "
        "truncated calls marked ⚠️ (their output is a lower bound).",
        "",
    ]
    if not rows:
        return lines + ["No documentation calls.", ""]
    truncated = sum(1 for r in rows if r.truncated)
    listed = (f"the {len(rows)} largest documentation calls (the JSON keeps no more)" if len(rows) >= DOCS_ROWS_LIMIT
              else f"{len(rows)} documentation calls")
    lines += [f"{truncated} of {listed} truncated, retries included: each row is a telemetry call as recorded, while "
              "the fit counts each phase's first attempt once and leaves retries out (see Summary), so its truncated "
              "count can be smaller.", "",
              "| Run | Phase | Group | Output tokens | Predicted | Ceiling | Truncated |",
              "|---|---|---|---:|---:|---:|---|"]
    for r in rows[:MAX_DOC_ROWS]:
        lines.append(
            f"| {r.run_id} | {r.phase_id} | {r.category}/{r.complexity} | {r.actual_output_tokens:,} | "
            f"{r.predicted_output_tokens:,} | {r.ceiling:,} | {'⚠️ yes' if r.truncated else 'no'} |"
        )
    if len(rows) > MAX_DOC_ROWS:
        lines.append(f"\n({len(rows) - MAX_DOC_ROWS} more in the JSON)")
    return lines + [""]


def _quality_section(result: CalibrationResult) -> list[str]:
    md = result.metadata
    c = md.sample_counts
    coverage = md.coverage_actual_max_tokens
    lines = [
        "## Data quality",
        "",
        f"- Rows read: {c.rows_read}; selected {c.selected}; usable {c.usable}",
        f"- Escalated retries: {_retries_line(md)}",
        f"- Source: {_sources_line(md.sources)}",
        f"- Excluded, failed and not truncated: {c.excluded_failed_not_truncated}",
        f"- Excluded, predicted ≤ 0: {c.excluded_nonpositive_predicted}",
        f"- Excluded, actual = 0: {c.excluded_zero_actual}",
        f"- Re-estimated from stored features: {c.with_features}; recorded prediction used: "
        f"{c.without_features}",
        f"- actual_max_tokens coverage: {_pct(coverage)}"
        + (" — below 80%: ceiling waste uses selected_budget for the rest" if coverage is not None and coverage < 0.8
           else ""),
    ]
    for kind, mapping in md.spellings_normalised.items():
        if mapping:
            lines.append(f"- {kind} spellings normalised: " + ", ".join(f"{k} ({v})" for k, v in mapping.items()))
    return lines + [""]


def write_json(result: CalibrationResult, path: Path) -> None:
    """The result as its model dumps it (``load_result`` reads it back), secrets masked."""
    path.write_text(redact(result.model_dump_json(indent=2)) + "\n", encoding="utf-8")


def write_plot(path: Path, plot: Any, *legacy: Any, alpha: float | None = None,
               sources: Sources | None = None) -> list[str]:
    """The PNG: per group, actual / predicted (held-out calls apart, censored calls as ▲), n, today's ceiling
    and the ceiling that ships (the refit's factor where nothing ships); titled SIMULATED when ``sources`` (``metadata.sources``) says the data is.

    ``plot`` is ``core.PlotData`` (``write_plot(path, calibration.plot, alpha=α, sources=…)``). The older
    positional form ``write_plot(path, groups, ratios, observed, factors, proposed, alpha)`` still works,
    without today's ceiling or held-out calls (it does not carry them). Returns the texts drawn (title,
    tick labels, legend), for tests.
    """
    from autopack.calibration.core import PlotData

    if not isinstance(plot, PlotData):
        ratios, observed, factors, proposed, alpha = legacy
        plot = PlotData(list(plot), list(ratios), list(observed), list(factors), list(proposed),
                        n=[int(np.asarray(r).size) for r in ratios])
    if alpha is None:
        raise TypeError("write_plot needs alpha, the calibration's target truncation rate")
    return _draw(path, plot, alpha, story.simulated_note(sources))


def _draw(path: Path, plot: Any, alpha: float, simulated: str | None = None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    groups = plot.groups
    k = max(1, len(groups))
    fig, ax = plt.subplots(figsize=(max(7.5, 1.2 * k + 4), 5.0), dpi=110)
    rng = np.random.default_rng(0)
    held_out = list(plot.held_out) or [np.zeros(np.asarray(r).size, dtype=bool) for r in plot.ratios]
    for i, (r, o, h) in enumerate(zip(plot.ratios, plot.observed, held_out, strict=True)):
        median = float(np.median(r)) if r.size else None
        if r.size > PLOT_POINTS_PER_GROUP:
            pick = rng.choice(r.size, PLOT_POINTS_PER_GROUP, replace=False)
            r, o, h = r[pick], o[pick], h[pick]
        jitter = rng.uniform(-0.16, 0.16, r.size)
        for mask, style in ((o & ~h, FITTED), (o & h, HELD_OUT), (~o & ~h, FITTED_CUT), (~o & h, HELD_OUT_CUT)):
            if mask.any():
                ax.scatter(i - 0.08 + jitter[mask], r[mask], **style)
        if median is not None:
            ax.hlines(median, i - 0.3, i + 0.14, colors="black", linewidth=1)
    for i, today in enumerate(plot.current or []):
        if today is not None:
            median, low, high = today
            ax.vlines(i + 0.3, low, high, colors="tab:purple", linewidth=1.2, alpha=0.7)
            ax.plot([i + 0.3], [median], marker="D", color="tab:purple", markersize=6)
    # what ships: the ceiling merging gives each call (a group's bounded step, not its refit's factor); the older
    # positional form carries only factors, and those marked proposed are what ships
    shipped = plot.shipped or [None] * len(groups)
    for i, change in enumerate(shipped):
        if change is not None:
            median, low, high = change
            ax.hlines(median, i - 0.38, i + 0.38, colors="tab:green", linewidth=2.5)
            ax.vlines(i + 0.38, low, high, colors="tab:green", linewidth=1.2, alpha=0.7)
    for i, (f, p) in enumerate(zip(plot.factors, plot.proposed, strict=True)):
        if f is not None and not (plot.shipped and p):
            ax.hlines(f, i - 0.38, i + 0.38, colors="tab:green" if p else "tab:orange",
                      linewidth=2.5, linestyles="-" if p else "--")
    ax.scatter([], [], label="fitted call", **FITTED)
    if any(h.any() for h in held_out):
        ax.scatter([], [], label="held-out call (newest, not fitted: the backtest replays it)", **HELD_OUT)
    ax.scatter([], [], label="truncated call (lower bound)", **FITTED_CUT)
    if any((h & ~o).any() for h, o in zip(held_out, plot.observed, strict=True)):
        ax.scatter([], [], label="truncated held-out call (lower bound)", **HELD_OUT_CUT)
    ax.plot([], [], color="black", linewidth=1, label="median")
    if plot.shipped:
        ax.plot([], [], color="tab:green", linewidth=2.5, label=f"ceiling that ships (median, 10–90 %; α={alpha})")
        ax.plot([], [], color="tab:orange", linewidth=2.5, linestyle="--", label="full refit's factor, not shipped")
    else:
        ax.plot([], [], color="tab:green", linewidth=2.5, label=f"budget factor, ships (α={alpha})")
        ax.plot([], [], color="tab:orange", linewidth=2.5, linestyle="--", label="budget factor, not shipped")
    if plot.current:
        ax.plot([], [], marker="D", color="tab:purple", linestyle="-", label="today's ceiling (median, 10–90 %)")
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda _v, _pos: ""))
    ax.set_xticks(range(k))
    counts = plot.n or [int(r.size) for r in plot.ratios]
    ax.set_xticklabels([f"{c}\n{x}\nn={n:,}" for (c, x), n in zip(groups, counts, strict=True)], fontsize=8)
    ax.set_ylabel("× the refit's prediction (actual, ceilings)")
    title = "Outputs and ceilings ÷ the refit's prediction, per group"
    ax.set_title(title, fontsize=10)
    if simulated:  # above everything, in red: nobody should read these ceilings as a real model's
        fig.suptitle(simulated, x=0.01, ha="left", fontsize=10, color="tab:red", fontweight="bold")
    legend = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path)
    texts = ([simulated or "", ax.get_title()] + [t.get_text() for t in ax.get_xticklabels()]
             + [t.get_text() for t in legend.get_texts()])
    plt.close(fig)
    return texts


#: Marker styles: fitted calls filled, held-out calls hollow squares; truncated calls as triangles.
FITTED: dict[str, Any] = {"s": 12, "alpha": 0.6, "color": "tab:blue", "marker": "o"}
HELD_OUT: dict[str, Any] = {"s": 22, "marker": "s", "facecolors": "none", "edgecolors": "tab:cyan",
                            "linewidths": 1.2}
FITTED_CUT: dict[str, Any] = {"s": 28, "marker": "^", "facecolors": "none", "edgecolors": "tab:red"}
HELD_OUT_CUT: dict[str, Any] = {"s": 34, "marker": "^", "color": "tab:red"}
