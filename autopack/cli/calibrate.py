"""``autopack calibrate``: the T5 calibration job (also ``scripts/calibrate_token_estimator.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from autopack.calibration.story import gate_sentence
from autopack.cli.common import AllowEmptyDbOption, ExpectDbIdOption, JsonOption, announce, guarded, writable_dir
from autopack.cli.options import params_command
from autopack.errors import AutopackError
from autopack.params import CalibrationParams

if TYPE_CHECKING:
    from autopack.calibration.result import CalibrationResult


class NoGroupReachesMinSamplesError(AutopackError):
    """Nothing could be calibrated: every group has fewer samples than --min-samples (the original exited 1)."""

    exit_code = 1


def _console_summary(result: CalibrationResult) -> str:
    md = result.metadata
    holdout = "–" if md.holdout_fraction is None else f"{md.holdout_fraction:.0%}"
    lines = [
        f"calibrated {md.total_samples} samples in {len(result.groups)} groups "
        f"(α = {md.target_truncation}, hold-out {holdout})",
        "",
        f"{'group':<28} {'n':>5} {'cens':>4} {'median':>7} {'factor':>7} {'conf':>5} {'ceil/act':>8}  proposed",
    ]
    for g in result.groups:
        label = f"{g.category}/{g.complexity}"
        median = "–" if g.median_ratio is None else f"{g.median_ratio:.3f}"
        factor = "–" if g.budget_factor is None else f"{g.budget_factor:.3f}"
        conf = "–" if g.confidence is None else f"{g.confidence:.2f}"
        waste = "–" if g.median_ceiling_waste is None else f"{g.median_ceiling_waste:.2f}"
        lines.append(f"{label:<28} {g.n:>5} {g.n_censored:>4} {median:>7} {factor:>7} {conf:>5} {waste:>8}  "
                     f"{'yes' if g.proposed else 'no'}")
    bt = result.backtest
    if bt.test_n:
        lines += ["", f"backtest on the newest {bt.test_n} calls (truncation interval, reserved/used):"]
        labels = {"current": "current (today)", "shipped": "shipped (this PR)", "proposed": "full refit (not shipped)",
                  "original_median": "original median"}
        for name, m in (("current", bt.current), ("shipped", bt.shipped), ("proposed", bt.proposed),
                        ("original_median", bt.original_median)):
            if m is not None and m.truncation_interval is not None:
                low, high = m.truncation_interval
                lines.append(f"  {labels[name]:<18} {100 * (low or 0):5.1f}–{100 * (high or 0):5.1f}%  "
                             f"{m.reserved_over_used or 0:.2f}" + ("" if m.evidence else "  (thin evidence)"))
    if md.sources is not None and md.sources.simulated:
        lines += ["", "data: SIMULATED provider calls (not a real model)"]
    gate = result.gate
    lines += ["", f"gate: {'PASSED' if gate.passed else 'not passed'} "
              f"({len(result.proposed_changes)} proposed change(s))", f"  {gate_sentence(result)}"]
    lines += [f"  - {r}" for r in gate.reasons]
    lines += ["", f"report: {result.report_path}", f"json:   {result.json_path}", f"plot:   {result.plot_path}"]
    return "\n".join(lines)


@params_command(CalibrationParams)
def calibrate(
    params: CalibrationParams,
    output_dir: Annotated[Path, typer.Option("--output-dir", help="Where the report, JSON and plot go.")] = Path("."),
    include_run_id: Annotated[
        list[str] | None, typer.Option("--include-run-id", help="Only these runs (repeatable).")
    ] = None,
    allow_empty_db: AllowEmptyDbOption = False,
    as_json: JsonOption = False,
    expect_db_id: ExpectDbIdOption = None,
) -> None:
    """Calibrate the token estimator from telemetry: report (.md), patch (.json) and plot (.png).

    Exit 0 when a report was written and at least one group reached --min-samples (gate passed or not);
    1 when there are no usable samples (nothing is written), or no group reaches --min-samples (the report is
    still written); 2 on bad input (an --include-run-id without telemetry among them); 2/3 when the database
    guard refuses.
    """
    from autopack.calibration.runner import require_telemetry, run_calibration

    writable_dir(output_dir)
    database = guarded(expect_db_id, allow_empty_db, quiet=True)
    require_telemetry(database, include_run_id or ())
    result = run_calibration(
        database,
        params,
        include_run_ids=include_run_id or None,
        output_dir=output_dir,
    )
    announce(database)  # the [db] line every command prints: id, masked URL, revision
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        typer.echo(_console_summary(result))
    if result.collection_targets is not None and not result.collection_targets.groups_with_enough_samples:
        largest = max((g.n for g in result.groups), default=0)
        raise NoGroupReachesMinSamplesError(
            f"no group reaches --min-samples {params.min_samples} (the largest has {largest}): nothing could be calibrated",
            hint=f"collect more telemetry or lower --min-samples; report: {result.report_path}",
        )


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)
