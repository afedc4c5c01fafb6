"""The pull request's title and markdown body, rendered from the calibration JSON and the verification report.

The body is what the human reviewer decides on, so it carries everything needed to judge the change
without running anything, and every figure describes exactly what ships:

- a one-line effect (held-out truncation and reserved tokens, today → this pull request, with intervals),
  and a loud warning when the data came from the simulated provider;
- one verdict line per changed coefficient (the shared ``TOKEN_WEIGHTS`` included: they move every
  group): where its guarantee comes from and how many held-out calls confirm it, thin evidence flagged;
  the gate's state with one sentence reconciling it with those flags;
- the backtest with ``current`` (today), ``shipped`` (= this pull request) and, labelled as such, the
  full refit (``proposed``), which is *not* what ships; the drift table's "this pull request" row is the
  shipped replay;
- the per-group effect as a table and a Mermaid chart (GitHub renders both, nothing depends on an upload),
  with today's and the shipped factors read from the original and the edited estimator themselves;
- verification, provenance (data source, code commit, flow run) and a short glossary.

Verdicts, the gate's sentence and the drift table come from ``autopack.calibration.story``, as in the
calibration report, so the two say the same. It reads the typed result (``result.CalibrationResult``); figures an
older output lacks (null there) are left out or marked unknown, never invented.
It ends with the hidden marker the bot uses to find its PR again, and is passed through ``redact`` last.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel

from autopack.calibration import story
from autopack.calibration.result import (
    Backtest,
    BacktestGroup,
    CalibrationResult,
    GroupEntry,
    Interval,
    Metadata,
    MethodBacktest,
    Sources,
    Truncation,
)
from autopack.config import get_settings
from autopack.errors import InputError
from autopack.github.estimator_edit import read_tables
from autopack.github.proposal import ESTIMATOR_PATH, Change, calibration_stamp, marker, parse_changes, proposal_hash
from autopack.github.verify import GROUP_TABLES, PhaseNumbers, TestFailure, VerificationReport
from autopack.logging import redact

#: GitHub refuses bodies over 65,536 characters; stay well below.
MAX_BODY_CHARS = 60_000
MAX_GROUP_ROWS = 60
#: Tables whose entries of one group form one curve (one verdict line per group, not per level).
CURVE_TABLES = frozenset({"ADAPTIVE_BUDGET_FACTORS"})
#: Groups drawn in the inline chart (x-axis labels stay readable).
MAX_CHART_GROUPS = 16
#: (key, header, what it is). ``shipped`` is this pull request; ``proposed`` is the full refit, not shipped.
BACKTEST_COLUMNS = (
    ("current", "today", "the estimator as it is"),
    ("shipped", "this pull request", "only the gated changes: what merging ships"),
    ("proposed", story.FULL_REFIT, "every group refitted, gated or not: **not** what merging ships"),
    ("original_median", "original method", "the original's median-ratio multiplier"),
)
BACKTEST_METRICS = (
    ("n", "held-out calls"),
    ("truncations", "truncations (censoring: lower–upper)"),
    ("truncation_rate", "truncation rate"),
    ("truncation_interval", "truncation rate, censoring bounds"),
    ("truncation_ci", "truncation rate, 95 % CI"),
    ("binomial_p", "exact binomial p (rate ≤ α)"),
    ("kupiec_p", "Kupiec p-value"),
    ("evidence", "enough held-out calls to carry evidence"),
    ("median_ceiling_over_actual", "median ceiling / actual"),
    ("p90_ceiling_over_actual", "p90 ceiling / actual"),
    ("reserved_over_used", "reserved / used"),
    ("reserved_tokens", "reserved tokens"),
    ("used_tokens", "used tokens"),
    ("pinball_loss", "pinball loss"),
)
GLOSSARY = (
    ("held-out calls", "the newest calls of the telemetry, kept out of the fit and replayed under each "
                       "coefficient set: the backtest measures what a set would have done on calls it never saw."),
    ("censored", "a call that was truncated: its true output length is only known to be at least its "
                 "ceiling. Replayed under a higher ceiling it may or may not have fitted, so truncation on "
                 "held-out data is a range (censoring bounds): lower end = such calls fitted, upper end = "
                 "they did not."),
    ("conformal quantile", "the budget factor is an upper order statistic of a group's actual/predicted "
                           "ratios, chosen so a new call of the group exceeds its ceiling with probability at "
                           "most α whatever the distribution, as long as calls are exchangeable."),
    ("one-sided interval", "an interval bounded on one side only (here: an upper bound on a truncation rate, "
                           "or a lower bound on coverage); it answers \"at most how bad\", which is the question."),
    ("exact binomial test", "the test of \"truncation rate ≤ α\" from the count of truncated held-out calls, "
                            "using the binomial distribution itself (no normal approximation, valid for small "
                            "counts); a small p-value means the rate is very probably above α."),
    ("Kupiec", "Kupiec's proportion-of-failures test: a likelihood-ratio test that the truncation rate "
               "equals α (two-sided), so a small p-value means too many truncations or too few: none cut of "
               "73 calls at α = 5 % gives p ≈ 0.006, ceilings reserving more than α asks. Reported for "
               "comparison; the gate uses the one-sided exact binomial test."),
    ("pinball loss", "the quantile (check) loss of a ceiling seen as the (1−α)-quantile of the output: "
                     "reserved tokens above the output cost α each, tokens cut off cost 1−α each; lower is "
                     "better, in tokens per call."),
    ("reserved / used", "total ceiling tokens (max_tokens) divided by total output tokens; 1.0 would be no "
                        "headroom at all."),
)


def pr_title(calibration: CalibrationResult) -> str:
    """Version and count, marked when any sample is simulated: a list of pull requests shows titles only, and the
    branch's commit message is the title too."""
    stamp = calibration_stamp(calibration.metadata)
    n = len(calibration.proposed_changes)
    sources = calibration.metadata.sources
    marker = "[SIMULATED DATA] " if sources is not None and sources.simulated else ""
    return f"{marker}Calibrate token estimator ({stamp.version}): {n} coefficient change{'s' if n != 1 else ''}"


def render_pr_body(
    calibration: CalibrationResult,
    verification: VerificationReport | None,
    *,
    plot_link: str | None = None,
    estimator_path: str = ESTIMATOR_PATH,
    extra_secrets: Sequence[str] = (),
    flow_run_url: str | None = None,
    code_commit: str | None = None,
    code_commit_url: str | None = None,
    inline_chart: bool = True,
    original_source: str | None = None,
    edited_source: str | None = None,
) -> str:
    """Markdown body of the calibration PR (ends with ``<!-- autopack-calibration-pr proposal=<sha256> -->``).

    ``plot_link`` is where the plot can be seen (a path relative to the body file in a dry run); without
    it the plot is named but not embedded. ``inline_chart`` adds a Mermaid chart of the per-group effect
    (GitHub renders it). ``code_commit`` (and its web page) is the target repository's commit the proposal
    is based on; ``flow_run_url`` the Prefect flow run that made it. With ``original_source`` and
    ``edited_source`` (the estimator before and after the edit), today's and the shipped values are read
    from the files themselves, and a change the edited file does not carry is refused (``InputError``).
    """
    metadata = calibration.metadata
    changes = parse_changes(calibration.proposed_changes)
    stamp = calibration_stamp(metadata)
    digest = proposal_hash(changes)
    secrets = [*get_settings().secret_values(), *(s for s in extra_secrets if s)]
    tables = _Tables.read(original_source, edited_source, changes)
    alpha = metadata.target_truncation

    def build(group_rows: int) -> str:
        parts = [
            _summary(calibration, changes, stamp.version, estimator_path),
            _simulated_warning(metadata.sources),
            _effect(calibration.backtest, alpha),
            _verdicts(calibration, changes),
            _gate(calibration),
            _changes_table(changes),
            _group_effect(calibration, changes, tables, group_rows, chart=inline_chart),
            _backtest_table(calibration.backtest, metadata.method),
            _groups_table(calibration.groups, tables, group_rows),
            _verification(verification),
            _plot(calibration, plot_link),
            _provenance(metadata, calibration, code_commit, code_commit_url, flow_run_url),
            _glossary(),
            "---\n_Opened by autopack's calibration pipeline. It is never merged automatically: merge it only "
            "after review. Closing it tells the bot not to propose these values again: a later proposal is "
            "opened only if it differs materially from every closed one._\n\n" + marker(digest),
        ]
        return redact("\n\n".join(p.strip("\n") for p in parts if p) + "\n", secrets)

    body = build(MAX_GROUP_ROWS)
    rows = MAX_GROUP_ROWS
    while len(body) > MAX_BODY_CHARS and rows > 0:
        rows //= 2
        body = build(rows)
    return body


# --- what ships, read from the estimator files ----------------------------------------------------


class _Tables:
    """Today's and the shipped coefficient tables (from the files when given, else from the changes)."""

    def __init__(self, before: Mapping[str, Mapping[tuple[str, str], float]],
                 after: Mapping[str, Mapping[tuple[str, str], float]], from_files: bool) -> None:
        self.before, self.after, self.from_files = before, after, from_files

    @classmethod
    def read(cls, original: str | None, edited: str | None, changes: Sequence[Change]) -> _Tables:
        if original is not None and edited is not None:
            before, after = read_tables(original), read_tables(edited)
            for c in changes:
                shipped = after.get(c.coefficient, {}).get(c.key)
                if shipped is None or not math.isclose(shipped, c.new, rel_tol=1e-9, abs_tol=1e-12):
                    raise InputError(f"the edited estimator holds {shipped} for {c.label}, the proposal says {c.new}; "
                                     "the body would not describe what ships")
            return cls(before, after, True)
        before_d: dict[str, dict[tuple[str, str], float]] = {}
        after_d: dict[str, dict[tuple[str, str], float]] = {}
        for c in changes:
            if c.old is not None:
                before_d.setdefault(c.coefficient, {})[c.key] = c.old
            after_d.setdefault(c.coefficient, {})[c.key] = c.new
        return cls(before_d, after_d, False)

    def value(self, table: str, key: tuple[str, str], *, shipped: bool) -> float | None:
        return (self.after if shipped else self.before).get(table, {}).get(key)

    def known(self, table: str, key: tuple[str, str]) -> bool:
        """Whether today's/the shipped value of this entry is known (always, when read from the files)."""
        return self.from_files or key in self.after.get(table, {})

    def arrow(self, table: str, key: tuple[str, str], *, unset: str) -> str:
        if not self.known(table, key):
            return "unchanged"
        return _arrow(self.value(table, key, shipped=False), self.value(table, key, shipped=True), unset=unset)

    def shipped(self, table: str, key: tuple[str, str], *, unset: str) -> str:
        if not self.known(table, key):
            return "unchanged"
        value = self.value(table, key, shipped=True)
        return _fmt(value) if value is not None else unset


# --- sections ------------------------------------------------------------------------------------


def _summary(calibration: CalibrationResult, changes: Sequence[Change], version: str, estimator_path: str) -> str:
    metadata = calibration.metadata
    tables = sorted({c.coefficient for c in changes})
    added = sum(1 for c in changes if c.old is None)
    return (
        f"## Token estimator calibration `{version}`\n\n"
        f"This pull request sets **{len(changes)}** coefficient value{'s' if len(changes) != 1 else ''} "
        f"({added} new entr{'ies' if added != 1 else 'y'}) in {', '.join(f'`{t}`' for t in tables)} of "
        f"`{estimator_path}`, calibrated on **{_fmt(metadata.total_samples)}** telemetry samples. "
        "Only those literals and the calibration stamp (`CALIBRATION_VERSION`, `CALIBRATION_DATE`, "
        "`CALIBRATION_SAMPLES`) change."
    )


def _simulated_warning(sources: Sources | None) -> str:
    if sources is None:
        return ""
    sim = [m for m in sources.models if m.simulated]
    if not (sources.simulated or sim):
        return ""
    n_sim = sum(m.samples for m in sim)
    total = sum(m.samples for m in sources.models)
    share = f"{n_sim} of {total} samples" if total else "the samples"
    named = ", ".join(f"`{_text(m.provider)}` / `{_text(m.model)}`" for m in sim) or "simulated"
    return (
        "> [!WARNING]\n"
        f"> **SIMULATED DATA.** {share.capitalize()} came from the simulated provider ({named}), not from a "
        "real model. These coefficients describe the simulator's length model: do not merge them into an "
        "estimator that budgets real calls."
    )


def _effect(backtest: Backtest, alpha: float | None) -> str:
    current, shipped = backtest.current, backtest.shipped
    if current is None or shipped is None:
        return ("**Effect on held-out calls:** unknown — the calibration output has no `shipped` backtest, so "
                "nothing here measures exactly what this pull request ships (see the backtest below).")
    n = shipped.n if shipped.n is not None else current.n
    target = f", target α = {_pct(alpha)}" if alpha is not None else ""
    return (
        f"**Effect on the {_fmt(n)} held-out calls** (today → this pull request{target}): "
        f"truncation {_truncation(current)} → **{_truncation(shipped)}**; "
        f"reserved / used {_fmt(current.reserved_over_used)} → **{_fmt(shipped.reserved_over_used)}**"
        + _reserved_change(current, shipped) + "."
    )


def _truncation(m: MethodBacktest) -> str:
    """``2/19 = 10.5 %`` or, with censoring, ``2–3 of 19 = 10.5–15.8 %``, then the 95 % CI."""
    n, k, k_upper = m.n, m.truncations, m.truncations_upper
    interval = _pair(m.truncation_interval)
    rate = m.truncation_rate
    if interval is not None and not math.isclose(interval[0], interval[1], abs_tol=1e-12):
        count = f"{_fmt(k)}–{_fmt(k_upper)} of {_fmt(n)} = " if k is not None and k_upper is not None else ""
        text = f"{count}{_pct(interval[0])}–{_pct(interval[1])}"
    else:
        count = f"{_fmt(k)}/{_fmt(n)} = " if k is not None and n is not None else ""
        text = f"{count}{_pct(rate if rate is not None else interval[0] if interval else None)}"
    ci = _pair(m.truncation_ci)
    return text + (f" (95 % CI {_pct(ci[0])}–{_pct(ci[1])})" if ci else "")


def _reserved_change(current: MethodBacktest, shipped: MethodBacktest) -> str:
    before, after = current.reserved_tokens, shipped.reserved_tokens
    if before is None or after is None:
        return ""
    change = f", {(after - before) / before * 100:+.1f} %" if before else ""
    return f" (reserved tokens {before:,.0f} → {after:,.0f}{change})"


def _verdicts(calibration: CalibrationResult, changes: Sequence[Change]) -> str:
    """One line per changed coefficient: the group's verdict (``story.GroupVerdict.line``), then the gate's words."""
    gate = calibration.gate
    verdicts = story.group_verdicts(calibration)
    minimum = story.min_heldout(calibration)
    lines = ["### Verdicts", "",
             "One line per changed coefficient: what ships, where its guarantee comes from (the bound on the "
             "group's own fitted calls) and how many held-out calls confirm it; then one line per documentation "
             "group not raised, saying why.", ""]
    weights = [c for c in changes if c.coefficient == "TOKEN_WEIGHTS"]
    shared = [c for c in changes if c.coefficient != "TOKEN_WEIGHTS" and _group_of(c) is None]
    curves: dict[tuple[str, tuple[str, str]], list[Change]] = {}
    for c in changes:
        group_key = _group_of(c)
        if c.coefficient == "TOKEN_WEIGHTS" or group_key is None:
            continue
        if c.coefficient in CURVE_TABLES:  # one line per group's curve, not per level
            curves.setdefault((c.coefficient, group_key), []).append(c)
            continue
        what = f"`{c.coefficient}[{_text(c.key[0])}, {_text(c.key[1])}]` {_old(c)} → {_fmt(c.new)}"
        lines += _verdict_lines(what, c, verdicts.get(group_key), minimum)
    for (table, group_key), levels in curves.items():
        points = ", ".join(f"`{_text(c.key[1])}` {_old(c)} → {_fmt(c.new)}" for c in levels)
        what = (f"`{table}` of `{_text(group_key[0])}/{_text(group_key[1])}` "
                f"({len(levels)} level{'s' if len(levels) != 1 else ''}: {points})")
        lines += _verdict_lines(what, levels[0], verdicts.get(group_key), minimum,
                                default=f"the run-time curve of {group_key[0]}/{group_key[1]}'s budget factor")
    if shared:
        listed = ", ".join(f"`{c.coefficient}[{_text(c.key[0])}, {_text(c.key[1])}]` {_old(c)} → {_fmt(c.new)}"
                           for c in shared)
        said = "; ".join(dict.fromkeys(c.source.verdict for c in shared if c.source and c.source.verdict))
        lines.append(f"- {'✅' if said else '⚠️'} shared setting{'s' if len(shared) != 1 else ''} {listed}: "
                     + (_text(said) if said else "**no gate verdict in the calibration output**"))
    weights_verdict = gate.weights.verdict if gate.weights else None
    if weights:
        said = weights_verdict or "**no gate verdict in the calibration output**"
        moved = ", ".join(f"`{_text(c.key[0])}/{_text(c.key[1])}` {_old(c)} → {_fmt(c.new)}" for c in weights)
        lines.append(f"- {'✅' if weights_verdict else '⚠️'} `TOKEN_WEIGHTS` (shared: moves the prediction of "
                     f"every group, calibrated or not) {moved}: {_text(said)}")
    elif weights_verdict:
        lines.append(f"- `TOKEN_WEIGHTS` unchanged: {_text(weights_verdict)}")
    whole = gate.shipped
    if whole is not None and whole.verdict:
        thin = "thin" in whole.verdict.lower()
        lines.append(f"- {'✅' if whole.passed and not thin else '⚠️'} everything above together: "
                     f"{_text(whole.verdict)}")
    lines += [f"- {_text(line)}" for line in story.docs_not_raised(calibration)]  # after: they change nothing
    return "\n".join(lines)


def _verdict_lines(what: str, c: Change, verdict: story.GroupVerdict | None, minimum: int | None, *,
                   default: str = "no verdict in the calibration output") -> list[str]:
    """``- ⚠️ what: **ships** — bound: …; confirmed on …`` and, under it, the gate's own words."""
    source = c.source
    said = (source.verdict if source else None) or (verdict.detail if verdict else None) or default
    if verdict is None:  # an older output without its group: the change's own backtest is all there is
        n = source.n if source else None
        confirmation = story.Confirmation.of(source.backtest if source else None, minimum, n=n)
        icon = "⚠️" if confirmation.thin else "✅"
        return [f"- {icon} {what}: {_text(said)} — {confirmation.text()} (n = {_fmt(n)})"]
    if not verdict.kind.ships:  # in proposed_changes, so it ships whatever the group entry says
        verdict = dataclasses.replace(verdict, kind=story.VerdictKind.SHIPS)
    return [f"- {verdict.icon} {what}: {verdict.line()}", f"  - gate: {_text(said)}"]


def _group_of(c: Change) -> tuple[str, str] | None:
    return c.group or (c.key if c.coefficient in GROUP_TABLES else None)


def _gate(calibration: CalibrationResult) -> str:
    """The gate's state, one sentence on what it means next to the verdicts' warnings, then its reasons."""
    gate = calibration.gate
    state = "passed" if gate.passed else "not passed"
    reasons = [f"- {_text(r)}" for r in gate.reasons] or ["- (no reasons given)"]
    return "\n".join([f"### Gate: {state}", "", story.gate_sentence(calibration), "",
                      "<details><summary>The gate's reasons, group by group</summary>", "", *reasons, "",
                      "</details>"])


def _changes_table(changes: Sequence[Change]) -> str:
    rows = [
        "### Proposed changes",
        "",
        f"| Coefficient | Key | Old | New | Change | n | Held-out | Confidence | {story.INTERVAL_COLUMN} | "
        "Held-out truncation, this PR | Reserved / used, this PR |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for c in changes:
        source = c.source
        own = source.backtest if source else None
        backtest = (own.shipped or own) if own is not None else None  # what ships
        truncation = _group_truncation(backtest)
        rows.append(
            "| "
            + " | ".join(
                [
                    f"`{c.coefficient}`",
                    f"`{_text(c.key[0])}, {_text(c.key[1])}`",
                    _old(c),
                    _fmt(c.new),
                    _relative(c.old, c.new),
                    _fmt(source.n if source else None),
                    _fmt(backtest.n if backtest else None),
                    _fmt(source.confidence if source else None),
                    _fmt(source.interval if source else None),
                    truncation,
                    _fmt(backtest.reserved_over_used if backtest else None),
                ]
            )
            + " |"
        )
    rows += ["", story.INTERVAL_NOTE]
    return "\n".join(rows)


def _group_effect(calibration: CalibrationResult, changes: Sequence[Change], tables: _Tables, limit: int,
                  *, chart: bool) -> str:
    """Per group with held-out calls: today's and the shipped factor and overhead, and both backtests."""
    groups = calibration.backtest.groups
    if not groups:
        return ""
    has_shipped = any(g.shipped is not None for g in groups)
    changed = {c.key for c in changes if c.coefficient in GROUP_TABLES}
    weights_changed = any(c.coefficient == "TOKEN_WEIGHTS" for c in changes)
    ordered = sorted(groups, key=lambda g: ((g.category, g.complexity) not in changed, -g.n))
    shown = ordered[:limit]
    ship_label = "this PR" if has_shipped else "full refit (no `shipped` per group in the output)"
    rows = [
        "### Per-group effect (held-out calls)",
        "",
        f"Today → {'this pull request' if has_shipped else 'the full refit'}, per (category, complexity). "
        "Factor and overhead are read from the estimator before and after this pull request"
        + ("" if tables.from_files else " (as proposed)") + "."
        + (" `TOKEN_WEIGHTS` change too, so every group's prediction moves." if weights_changed else ""),
        "",
        f"| Group | Held-out | Budget factor | Phase overhead | Truncation today → {ship_label} "
        f"| Reserved / used today → {ship_label} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for g in shown:
        key = (g.category, g.complexity)
        today, after = g.current, g.shipped if has_shipped else g.proposed
        rows.append("| " + " | ".join([
            f"`{_text(key[0])}, {_text(key[1])}`" + (" (changed)" if key in changed else ""),
            _fmt(g.n),
            tables.arrow("BUDGET_FACTORS", key, unset="floor & buffer"),
            tables.arrow("PHASE_OVERHEAD", key, unset="default"),
            f"{_group_truncation(today)} → {_group_truncation(after)}",
            f"{_fmt(today.reserved_over_used if today else None)} → "
            f"{_fmt(after.reserved_over_used if after else None)}",
        ]) + " |")
    if len(groups) > limit:
        rows.append(f"\n({len(groups) - limit} more groups in the calibration report)")
    rows += step_lines(calibration)
    if chart:
        rows += ["", _mermaid(shown[:MAX_CHART_GROUPS], has_shipped)]
    return "\n".join(rows)


def step_lines(calibration: CalibrationResult) -> list[str]:
    """One line per group raised as a step toward α (``story``): safe, expected truncation after it, price."""
    steps = [v for v in story.group_verdicts(calibration).values() if v.kind is story.VerdictKind.STEP_TOWARD_ALPHA]
    return ["", *(f"- `{_text(v.group[0])}, {_text(v.group[1])}`: {v.line()}" for v in steps)] if steps else []


def _group_truncation(m: Truncation | None) -> str:
    if m is None:
        return _pct(None)
    interval = _pair(m.truncation_interval)
    if interval is not None and interval[0] != interval[1]:
        return f"{_pct(interval[0])}–{_pct(interval[1])}"
    return _pct(m.truncation_rate)


def _mermaid(groups: Sequence[BacktestGroup], has_shipped: bool) -> str:
    """Held-out reserved/used per group as a Mermaid ``xychart-beta``: bars today, line after (GitHub renders it)."""
    labels, today, after = [], [], []
    for g in groups:
        then_method = g.shipped if has_shipped else g.proposed
        before = g.current.reserved_over_used if g.current else None
        then = then_method.reserved_over_used if then_method else None
        if before is None or then is None:
            continue
        label = f"{g.category}/{g.complexity}".replace('"', "'")
        labels.append(f'"{label}"')
        today.append(f"{before:.3g}")
        after.append(f"{then:.3g}")
    if not labels:
        return ""
    top = max(float(v) for v in today + after)
    what = "this pull request" if has_shipped else "full refit"
    return "\n".join([
        "```mermaid",
        "xychart-beta",
        f'    title "Held-out reserved / used per group: bars today, line {what}"',
        f"    x-axis [{', '.join(labels)}]",
        f'    y-axis "reserved / used" 0 --> {math.ceil(top * 1.1 * 10) / 10:g}',
        f"    bar [{', '.join(today)}]",
        f"    line [{', '.join(after)}]",
        "```",
    ])


def _backtest_table(backtest: Backtest, method: str | None = None) -> str:
    columns = [(k, h, d, m) for k, h, d in BACKTEST_COLUMNS if (m := getattr(backtest, k)) is not None]
    if not columns:
        return "### Backtest\n\n(no backtest in the calibration output)"
    present = [(key, label) for key, label in BACKTEST_METRICS
               if any(getattr(m, key) is not None for _, _, _, m in columns)]
    split = ", ".join(f"{label} {_fmt(value)}" for value, label in
                      ((backtest.train_n, "fitted on"), (backtest.test_n, "replayed on"),
                       (backtest.split_at, "split at"))
                      if value is not None)
    rows = [
        "### Backtest",
        "",
        "Each coefficient set replayed on the held-out (newest) telemetry"
        + (f" ({split})" if split else "") + ": "
        + "; ".join(f"`{k}` = {d}" for k, _, d, _ in columns) + ".",
    ]
    if backtest.shipped is None:
        rows += ["", "⚠️ This calibration output has no `shipped` backtest: no column below is exactly what this "
                     "pull request ships."]
    rows += [
        "",
        "| Metric | " + " | ".join(f"`{k}` = {h}" for k, h, _, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for key, label in present:
        rows.append(f"| {label} | " + " | ".join(_metric(key, m) for _, _, _, m in columns) + " |")
    rows += _drift(backtest, method)
    return "\n".join(rows)


def _metric(key: str, m: MethodBacktest) -> str:
    """One backtest cell: rates as percentages, counts with their censoring upper end, tokens with separators."""
    value = getattr(m, key)
    if key == "truncations" and m.truncations_upper not in (None, value):
        return f"{_fmt(value)}–{_fmt(m.truncations_upper)}"
    if key == "truncation_rate":
        return _pct(m.truncation_rate)
    if key in ("truncation_interval", "truncation_ci"):
        pair = _pair(m.truncation_interval if key == "truncation_interval" else m.truncation_ci)
        return f"{_pct(pair[0])}–{_pct(pair[1])}" if pair else _fmt(value)
    if key in ("reserved_tokens", "used_tokens") and isinstance(value, int):
        return f"{value:,.0f}"
    return _fmt(value)


DRIFT_COLUMNS = (
    ("truncation_interval", "truncation"),
    ("worst_bin_truncation", "worst block"),
    ("reserved_over_used", "reserved / used"),
    ("reserved_vs_oracle", "reserve ÷ oracle's"),
    ("pinball_vs_oracle", "pinball ÷ oracle's"),
)


def _drift(backtest: Backtest, method: str | None = None) -> list[str]:
    """Every drift method replayed on the held-out calls in time order (``story.drift_table``)."""
    table = story.drift_table(backtest, method)
    drift = backtest.calibration_under_drift
    if table is None or drift is None:
        return []
    calls = f" ({_text(drift.calls)}; worst of {_text(drift.bins)})" if drift.calls and drift.bins else ""
    rows = ["", f"How each way of following drift would have done on the held-out calls, in time order{calls}, "
                f"replaying {table.basis}. The oracle knows each group's held-out quantile in hindsight; `static` is "
                "one fixed factor per group.",
            "", "| Method | " + " | ".join(label for _, label in DRIFT_COLUMNS) + " |",
            "|---|" + "---:|" * len(DRIFT_COLUMNS)]
    for row in table.rows:
        m = row.metrics
        label = f"**{row.label}**" if row.this_pr else row.label
        cells = []
        for key, _ in DRIFT_COLUMNS:
            value = getattr(m, key)
            if key == "truncation_interval":
                pair = _pair(m.truncation_interval)
                cells.append(_pct(pair[0]) if pair and pair[0] == pair[1] else
                             f"{_pct(pair[0])}–{_pct(pair[1])}" if pair else _pct(m.truncation_rate))
            elif key == "worst_bin_truncation":
                cells.append(_pct(m.worst_bin_truncation))
            else:
                cells.append(_fmt(value))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    if table.note:
        rows += ["", table.note]
    return rows


def _groups_table(groups: Sequence[GroupEntry], tables: _Tables, limit: int) -> str:
    if not groups:
        return ""
    extra = any(g.factor_method is not None for g in groups)
    header = ("| Category | Complexity | n | Censored | Median ratio | Median ratio CI | Pooling weight "
              "| Full refit's factor | Shipped factor | Full refit's confidence | Original confidence |"
              + (" Factor method | Assumption |" if extra else ""))
    rows = [
        "### Groups (fit details)",
        "",
        "`Full refit's factor` is the refit's for every group, gated or not (not shipped), and `Full refit's "
        "confidence` is that factor's; `Shipped factor` is what the estimator holds after this pull request (its "
        "guarantee is on its verdict line).",
        "",
        header,
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|" + ("---|---|" if extra else ""),
    ]
    for g in groups[:limit]:
        method = _text(g.factor_method or g.factor_source or "—")
        if g.extrapolation:
            method += " (**extrapolation**)"
        cells = [_text(g.category), _text(g.complexity)] + [
            _fmt(v) for v in (g.n, g.n_censored, g.median_ratio, g.median_ratio_ci, g.pooling_weight, g.budget_factor)
        ] + [tables.shipped("BUDGET_FACTORS", g.key, unset="floor & buffer"),
             _fmt(g.confidence), _fmt(g.original_confidence)]
        if extra:
            cells += [method, _text(g.assumption or "—")]
        rows.append("| " + " | ".join(cells) + " |")
    if len(groups) > limit:
        rows.append(f"\n({len(groups) - limit} more groups in the calibration report)")
    return "\n".join(rows)


def _verification(report: VerificationReport | None) -> str:
    if report is None:
        return "### Verification\n\nNot run."
    ok_checks = sum(1 for c in report.table_checks if c.ok)
    lines = [
        "### Verification",
        "",
        f"- Result: **{'passed' if report.ok else 'FAILED'}**",
        f"- Edited module imported in a fresh interpreter; table values read back as proposed: "
        f"{ok_checks}/{len(report.table_checks)}",
    ]
    tests = report.tests
    if tests.status == "not_found":
        lines.append("- Estimator tests: not present in the repository")
    elif tests.status == "skipped":
        lines.append("- Estimator tests: skipped")
    else:
        lines.append(f"- Estimator tests: {tests.status} (`{tests.command}`)")
    lines += [f"- Error: {_text(e)}" for e in report.errors]
    lines += [f"- Note: {_text(n)}" for n in report.notes]
    if report.estimates:
        lines += [
            "",
            "Ceiling for one representative phase of each changed group (today → this pull request), computed "
            "by the edited estimator itself:",
            "",
            "| Group | Phase (one new deliverable) | Predicted | Selected budget | max_tokens sent |",
            "|---|---|---:|---:|---:|",
        ]
        for e in report.estimates:
            old = e.old or PhaseNumbers()
            pairs = ((old.predicted, e.new.predicted), (old.selected_budget, e.new.selected_budget),
                     (old.actual_max_tokens, e.new.actual_max_tokens))
            lines.append(
                f"| `{_text(e.category)}, {_text(e.complexity)}` | `{_text(e.deliverable)}` | "
                + " | ".join(f"{_fmt(before)} → {_fmt(after)}" for before, after in pairs) + " |"
            )
    return "\n".join(lines)


def _plot(calibration: CalibrationResult, plot_link: str | None) -> str:
    plot_path = calibration.plot_path
    if plot_link:
        return f"### Plot\n\n![calibration plot]({plot_link.replace(' ', '%20').replace(')', '%29')})"
    if plot_path:
        return f"### Plot\n\n`{_text(PurePath(plot_path).name)}` is in the calibration output (not uploaded)."
    return ""


def _provenance(metadata: Metadata, calibration: CalibrationResult, code_commit: str | None,
                code_commit_url: str | None, flow_run_url: str | None) -> str:
    span = metadata.time_span
    run_ids = metadata.run_ids
    report = calibration.report_path
    sources = metadata.sources
    models = sources.models if sources else []
    simulated = sources.simulated if sources else None
    if simulated is None and models:
        simulated = any(m.simulated for m in models)
    source = ", ".join(
        f"`{_text(m.provider)}` / `{_text(m.model)}`: {_fmt(m.samples)}"
        + (" (**simulated**)" if m.simulated else "") for m in models)
    kind = {True: "**simulated** (not a real model)", False: "real provider calls",
            None: "unknown (the calibration output names no provider or model for its samples)"}[simulated]
    retries: object = metadata.retries_excluded
    if metadata.retries_known is False:
        retries = "not known (the telemetry does not say which calls were escalated retries)"
    commit = None
    if code_commit:
        commit = f"[`{code_commit[:12]}`]({code_commit_url})" if code_commit_url else f"`{code_commit[:12]}`"
    method: str | None = metadata.method
    params = metadata.method_params.items()
    if method is not None and params:
        method = f"{method} ({', '.join(f'{k} = {_fmt(v)}' for k, v in params)})"
    items: list[tuple[str, Any, bool]] = [
        ("Data", kind, True),
        ("Providers / models (samples)", source or None, True),
        ("Retries left out of the fit (escalated, or a cut phase run again)", retries, False),
        ("Code commit (base of this pull request)", commit, True),
        ("Flow run", f"[{_text(flow_run_url)}]({flow_run_url})" if flow_run_url else None, True),
        ("Database id", metadata.db_id, False),
        ("Calibration run id", metadata.calibration_run_id, False),
        ("Method version", metadata.method_version, False),
        ("Ceiling method", method, False),
        ("Generated at", metadata.generated_at, False),
        ("Samples", metadata.total_samples, False),
        ("Run ids", ", ".join(run_ids) if run_ids else None, False),
        ("Time span", f"{span.start} → {span.end}" if span else None, False),
        ("Calibration window", metadata.window(), False),
        ("Target truncation rate", metadata.target_truncation, False),
        ("Confidence threshold", metadata.confidence_threshold, False),
        ("Minimum samples per group", metadata.min_samples, False),
        ("Held-out calls needed to carry evidence", metadata.min_evidence_calls, False),
        ("Level of the gate's binomial test", metadata.gate_level, False),
        ("Largest change of a coefficient per run", f"×{metadata.max_coefficient_step}"
         if metadata.max_coefficient_step is not None else None, False),
        ("Report", PurePath(report).name if report else None, False),
    ]
    lines = ["### Data and provenance", ""]
    for label, value, markdown in items:
        if value is None:
            continue
        shown = str(value) if markdown else _text(value) if isinstance(value, str) else _fmt(value)
        lines.append(f"- {label}: {shown}")
    return "\n".join(lines)


def _glossary() -> str:
    lines = ["<details><summary>Glossary</summary>", ""]
    lines += [f"- **{term}**: {text}" for term, text in GLOSSARY]
    lines += ["", "</details>"]
    return "\n".join(lines)


# --- the comment when a proposal is not published ------------------------------------------------


def not_updated_marker(digest: str) -> str:
    """Hidden tag of the "not updated" comment for one proposal (so a re-run does not comment twice)."""
    return f"<!-- autopack-calibration-not-updated proposal={digest} -->"


def render_not_updated(
    changes: Sequence[Change],
    report: VerificationReport,
    digest: str,
    *,
    pr_number: int | None = None,
    flow_run_url: str | None = None,
    extra_secrets: Sequence[str] = (),
) -> str:
    """Why a proposal was not published: the failing test, its assertion and values, and pytest's output.

    Posted as a comment on the open PR (which keeps its previous proposal) and written next to the body.
    """
    secrets = [*get_settings().secret_values(), *(s for s in extra_secrets if s)]
    subject = f"pull request #{pr_number}" if pr_number is not None else "the calibration branch"
    lines = [
        "### ⛔ Not updated: the new proposal failed verification",
        "",
        f"autopack computed a new calibration proposal (`{digest[:12]}`), but the edited "
        f"`{ESTIMATOR_PATH}` failed verification, so **nothing was pushed**: {subject} still shows the previous "
        "proposal, unchanged.",
        "",
    ]
    failures = report.tests.failures
    for failure in failures[:5]:
        lines += _failure_lines(failure, changes)
    if len(failures) > 5:
        lines.append(f"- … and {len(failures) - 5} more failing tests")
    other = [e for e in report.errors if not failures or not e.startswith(failures[0].test_id)]
    lines += [f"- {_text(e)}" for e in other]
    lines += ["", "Proposed values:", "", "| Coefficient | Key | Old | New |", "|---|---|---:|---:|"]
    lines += [f"| `{c.coefficient}` | `{_text(c.key[0])}, {_text(c.key[1])}` | {_old(c)} | {_fmt(c.new)} |"
              for c in changes]
    output = report.tests.output or report.tests.output_tail
    if output:
        fence = "````" if "```" in output else "```"
        lines += ["", "<details><summary>pytest output</summary>", "", f"{fence}text", output, fence, "",
                  "</details>"]
    if flow_run_url:
        lines += ["", f"Flow run: [{_text(flow_run_url)}]({flow_run_url})"]
    lines += ["", not_updated_marker(digest)]
    return redact("\n".join(lines) + "\n", secrets)


def _failure_lines(failure: TestFailure, changes: Sequence[Change]) -> list[str]:
    lines = [f"- **Failing test:** `{_text(failure.test_id)}`", f"  - assertion: `{_text(failure.assertion)}`"]
    if failure.values:
        lines.append("  - values: " + ", ".join(f"`{_text(name)} = {_text(value)}`"
                                                for name, value in failure.values))
    implicated = _implicated(failure, changes)
    if implicated:
        lines.append("  - proposed entries matching those values: " + ", ".join(
            f"`{c.coefficient}[{_text(c.key[0])}, {_text(c.key[1])}]` {_old(c)} → {_fmt(c.new)}" for c in implicated))
    return lines


def _implicated(failure: TestFailure, changes: Sequence[Change]) -> list[Change]:
    """Changes whose key and new value both appear among the failing frame's values."""
    values = [value for _, value in failure.values]
    found = []
    for c in changes:
        if repr(c.key) in values and any(_same_number(v, c.new) for v in values):
            found.append(c)
    return found


def _same_number(text: str, number: float) -> bool:
    try:
        return math.isclose(float(text), number, rel_tol=1e-9, abs_tol=1e-12)
    except ValueError:
        return False


# --- formatting ----------------------------------------------------------------------------------


def _pair(value: Interval | None) -> tuple[float, float] | None:
    """Both ends of an interval, when both are known."""
    if value is not None and value[0] is not None and value[1] is not None:
        return value[0], value[1]
    return None


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _text(value: object) -> str:
    """One table-safe line: no pipes, backticks or newlines from data can break the markdown."""
    return str(value).replace("|", "\\|").replace("`", "'").replace("\r", " ").replace("\n", " ")


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, BaseModel):  # a nested setting (the method's feedback): its fields, in one line
        return _text(", ".join(f"{k}: {_fmt(v)}" for k, v in value.model_dump().items()))
    return _text(value)


def _old(c: Change) -> str:
    return _fmt(c.old) if c.old is not None else "(none)"


def _arrow(before: float | None, after: float | None, *, unset: str) -> str:
    first = _fmt(before) if before is not None else unset
    second = _fmt(after) if after is not None else unset
    return first if first == second else f"{first} → **{second}**"


def _relative(old: float | None, new: float) -> str:
    if old is None:
        return "new entry"
    if old == 0:
        return "—"
    return f"{(new - old) / abs(old) * 100:+.1f}%"
