"""The pull request's title and markdown body, rendered from the calibration JSON and the verification report.

The body is what the human reviewer decides on, so it carries everything needed to judge the change
without running anything: each old → new value with its evidence, the backtest, the gate's reasons,
what verification ran, and where the numbers come from. It ends with the hidden marker the bot uses to
find its PR again. It is passed through ``redact`` last: no secret can reach GitHub through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from autopack.config import get_settings
from autopack.errors import InputError
from autopack.github.proposal import ESTIMATOR_PATH, Change, calibration_stamp, marker, parse_changes, proposal_hash
from autopack.github.verify import VerificationReport
from autopack.logging import redact

#: GitHub refuses bodies over 65,536 characters; stay well below.
MAX_BODY_CHARS = 60_000
MAX_GROUP_ROWS = 60
BACKTEST_COLUMNS = ("current", "original_median", "proposed")
BACKTEST_METRICS = (
    ("n", "samples"),
    ("truncation_rate", "truncation rate"),
    ("truncation_ci", "truncation rate CI"),
    ("kupiec_p", "Kupiec p-value"),
    ("median_ceiling_over_actual", "median ceiling / actual"),
    ("p90_ceiling_over_actual", "p90 ceiling / actual"),
    ("reserved_over_used", "reserved / used"),
    ("pinball_loss", "pinball loss"),
)


def pr_title(calibration: Mapping[str, Any]) -> str:
    stamp = calibration_stamp(calibration.get("metadata", {}))
    n = len(calibration.get("proposed_changes") or [])
    return f"Calibrate token estimator ({stamp.version}): {n} coefficient change{'s' if n != 1 else ''}"


def render_pr_body(
    calibration: Mapping[str, Any],
    verification: VerificationReport | None,
    *,
    plot_link: str | None = None,
    estimator_path: str = ESTIMATOR_PATH,
    extra_secrets: Sequence[str] = (),
) -> str:
    """Markdown body of the calibration PR (ends with ``<!-- autopack-calibration-pr proposal=<sha256> -->``).

    ``plot_link`` is where the plot can be seen: a URL for a published PR, a path relative to the body
    file in a dry run. Without it the plot is named but not embedded.
    """
    if not isinstance(calibration, Mapping):
        raise InputError("calibration JSON must be an object")
    metadata = calibration.get("metadata") or {}
    changes = parse_changes(calibration.get("proposed_changes"))
    stamp = calibration_stamp(metadata)
    digest = proposal_hash(changes)
    secrets = [*get_settings().secret_values(), *(s for s in extra_secrets if s)]

    def build(group_rows: int) -> str:
        parts = [
            _summary(calibration, changes, stamp.version, estimator_path),
            _gate(calibration.get("gate") or {}),
            _changes_table(changes),
            _backtest_table(calibration.get("backtest") or {}),
            _groups_table(calibration.get("groups") or [], group_rows),
            _verification(verification),
            _plot(calibration, plot_link),
            _provenance(metadata, calibration),
            "---\n_Opened by autopack's calibration pipeline. It is never merged automatically: merge it only "
            "after review. Closing it tells the bot not to propose these exact values again._\n\n" + marker(digest),
        ]
        return redact("\n\n".join(p.strip("\n") for p in parts if p) + "\n", secrets)

    body = build(MAX_GROUP_ROWS)
    rows = MAX_GROUP_ROWS
    while len(body) > MAX_BODY_CHARS and rows > 0:
        rows //= 2
        body = build(rows)
    return body


# --- sections ------------------------------------------------------------------------------------


def _summary(calibration: Mapping[str, Any], changes: Sequence[Change], version: str, estimator_path: str) -> str:
    metadata = calibration.get("metadata") or {}
    tables = sorted({c.coefficient for c in changes})
    added = sum(1 for c in changes if c.old is None)
    return (
        f"## Token estimator calibration `{version}`\n\n"
        f"This pull request sets **{len(changes)}** coefficient value{'s' if len(changes) != 1 else ''} "
        f"({added} new entr{'ies' if added != 1 else 'y'}) in {', '.join(f'`{t}`' for t in tables)} of "
        f"`{estimator_path}`, calibrated on **{_fmt(metadata.get('total_samples'))}** telemetry samples. "
        "Only those literals and the calibration stamp (`CALIBRATION_VERSION`, `CALIBRATION_DATE`, "
        "`CALIBRATION_SAMPLES`) change."
    )


def _gate(gate: Mapping[str, Any]) -> str:
    passed = gate.get("passed")
    state = "passed" if passed is True else "not passed" if passed is False else "unknown"
    reasons = gate.get("reasons") or []
    lines = [f"### Gate: {state}"]
    lines += [f"- {_text(r)}" for r in reasons] or ["- (no reasons given)"]
    return "\n".join(lines)


def _changes_table(changes: Sequence[Change]) -> str:
    rows = [
        "### Proposed changes",
        "",
        "| Coefficient | Key | Old | New | Change | n | Confidence | Interval | Backtest truncation "
        "| Reserved / used |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for c in changes:
        raw_backtest = c.extra.get("backtest")
        backtest: Mapping[str, Any] = raw_backtest if isinstance(raw_backtest, Mapping) else {}
        rows.append(
            "| "
            + " | ".join(
                [
                    f"`{c.coefficient}`",
                    f"`{_text(c.key[0])}, {_text(c.key[1])}`",
                    _fmt(c.old) if c.old is not None else "(none)",
                    _fmt(c.new),
                    _relative(c.old, c.new),
                    _fmt(c.extra.get("n")),
                    _fmt(c.extra.get("confidence")),
                    _fmt(c.extra.get("interval")),
                    _fmt(backtest.get("truncation_rate")),
                    _fmt(backtest.get("reserved_over_used")),
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def _backtest_table(backtest: Mapping[str, Any]) -> str:
    columns = [c for c in BACKTEST_COLUMNS if isinstance(backtest.get(c), Mapping)]
    if not columns:
        return "### Backtest\n\n(no backtest in the calibration output)"
    rows = [
        "### Backtest",
        "",
        "Each coefficient set replayed on held-out telemetry: `current` = the estimator today, "
        "`original_median` = the original's median-ratio method, `proposed` = this pull request.",
        "",
        "| Metric | " + " | ".join(f"`{c}`" for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for key, label in BACKTEST_METRICS:
        rows.append(f"| {label} | " + " | ".join(_fmt(backtest[c].get(key)) for c in columns) + " |")
    return "\n".join(rows)


def _groups_table(groups: Sequence[Mapping[str, Any]], limit: int) -> str:
    if not groups:
        return ""
    rows = [
        "### Groups",
        "",
        "| Category | Complexity | n | Censored | Median ratio | Median ratio CI | Pooling weight | Budget factor "
        "| Confidence | Original confidence |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for g in list(groups)[:limit]:
        if not isinstance(g, Mapping):
            continue
        rows.append(
            "| "
            + " | ".join(
                [_text(g.get("category")), _text(g.get("complexity"))]
                + [
                    _fmt(g.get(k))
                    for k in ("n", "n_censored", "median_ratio", "median_ratio_ci", "pooling_weight", "budget_factor",
                              "confidence", "original_confidence")
                ]
            )
            + " |"
        )
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
            "Ceiling for one representative phase of each changed group (current → proposed):",
            "",
            "| Group | Phase (one new deliverable) | Predicted | Selected budget | max_tokens sent |",
            "|---|---|---:|---:|---:|",
        ]
        for e in report.estimates:
            old = e.old or {}
            lines.append(
                f"| `{_text(e.category)}, {_text(e.complexity)}` | `{_text(e.deliverable)}` | "
                + " | ".join(f"{_fmt(old.get(f))} → {_fmt(e.new.get(f))}"
                             for f in ("predicted", "selected_budget", "actual_max_tokens"))
                + " |"
            )
    return "\n".join(lines)


def _plot(calibration: Mapping[str, Any], plot_link: str | None) -> str:
    plot_path = calibration.get("plot_path")
    if plot_link:
        return f"### Plot\n\n![calibration plot]({plot_link.replace(' ', '%20').replace(')', '%29')})"
    if isinstance(plot_path, str) and plot_path:
        return f"### Plot\n\n`{_text(PurePath(plot_path).name)}` (in the calibration output; not uploaded)"
    return ""


def _provenance(metadata: Mapping[str, Any], calibration: Mapping[str, Any]) -> str:
    span = metadata.get("time_span") if isinstance(metadata.get("time_span"), Mapping) else {}
    run_ids = metadata.get("run_ids") or []
    report = calibration.get("report_path")
    items = [
        ("Database id", metadata.get("db_id")),
        ("Method version", metadata.get("method_version")),
        ("Generated at", metadata.get("generated_at")),
        ("Samples", metadata.get("total_samples")),
        ("Run ids", ", ".join(str(r) for r in run_ids) if run_ids else None),
        ("Time span", f"{span.get('start', '?')} → {span.get('end', '?')}" if span else None),
        ("Target truncation rate", metadata.get("target_truncation")),
        ("Confidence threshold", metadata.get("confidence_threshold")),
        ("Minimum samples per group", metadata.get("min_samples")),
        ("Report", PurePath(report).name if isinstance(report, str) and report else None),
    ]
    lines = ["### Provenance", ""]
    lines += [f"- {label}: {_text(value) if isinstance(value, str) else _fmt(value)}" for label, value in items
              if value is not None]
    return "\n".join(lines)


# --- formatting ----------------------------------------------------------------------------------


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
    return _text(value)


def _relative(old: float | None, new: float) -> str:
    if old is None:
        return "new entry"
    if old == 0:
        return "—"
    return f"{(new - old) / abs(old) * 100:+.1f}%"
