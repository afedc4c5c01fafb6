"""Telemetry-collection seed runs: v4 (reference §6) and runs modelled on its later seeds (v5, v6, v7).

Goals are worded to avoid the doc-synthesis misfires of reference §10.14 (no "comprehensive", "example",
"endpoints"), and every docs goal carries an explicit size cap (the seed's best practices). The later runs
keep the original's category/complexity mixes, including its spelling variants ("tests" in v5,
"testing" in v6), which ``autopack.taxonomy`` normalises at the estimator's entry.

Together they hold 61 phases over four runs (``ensure_seed_runs``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session

from autopack.db.models import Run
from autopack.errors import InputError
from autopack.execution.runs import create_run
from autopack.execution.spec import PhaseSpec, RunSpec
from autopack.run_order import WEEK_PREFIX, week_of

V4_RUN_ID = "telemetry-collection-v4"
V5_RUN_ID = "telemetry-collection-v5"
V6_RUN_ID = "telemetry-collection-v6"
V7_RUN_ID = "telemetry-collection-v7"
SEED_TOKEN_CAP = 500_000

#: (phase_id, category, complexity, deliverables, read_only_context, goal)
Row = tuple[str, str, str, tuple[str, ...], tuple[str, ...], str]


def _spec(run_id: str, goal: str, folder: str, rows: Sequence[Row]) -> RunSpec:
    def under(paths: Sequence[str]) -> list[str]:
        return [f"{folder}/{p}" for p in paths]

    return RunSpec(
        run_id=run_id,
        goal=goal,
        token_cap=SEED_TOKEN_CAP,
        phases=[
            PhaseSpec(
                phase_id=pid,
                name=pid,
                description=text,
                category=category,
                complexity=complexity,
                deliverables=under(deliverables),
                read_only_context=under(context),
                scope_paths=[f"{folder}/"],
                max_builder_attempts=3,
            )
            for pid, category, complexity, deliverables, context, text in rows
        ],
    )


# --------------------------------------------------------------------------------------------------
# v4: the ten phases of reference §6
# --------------------------------------------------------------------------------------------------
V4_ROWS: tuple[Row, ...] = (
    ("telemetry-p1-string-util", "implementation", "low", ("string_helper.py",), (),
     "Write string_helper.py with capitalize_words(text) and reverse_string(text), typed, with docstrings."),
    ("telemetry-p2-number-util", "implementation", "low", ("number_helper.py",), (),
     "Write number_helper.py with is_even(n), is_prime(n) and factorial(n); raise ValueError on negative input."),
    ("telemetry-p3-list-util", "implementation", "medium", ("list_helper.py",), (),
     "Write list_helper.py with chunk(items, size), flatten(nested), unique(items) keeping order, and "
     "group_by(items, key)."),
    ("telemetry-p4-date-util", "implementation", "medium", ("date_helper.py",), (),
     "Write date_helper.py using datetime: format_date(d, fmt), parse_date(text, fmt), add_days(d, n) and "
     "diff_days(a, b)."),
    ("telemetry-p5-dict-util", "implementation", "medium", ("dict_helper.py",), (),
     "Write dict_helper.py with deep_merge(a, b), get_nested(d, path), set_nested(d, path, value) and "
     "filter_keys(d, keys)."),
    ("telemetry-p6-string-tests", "tests", "medium", ("test_string_helper.py", "conftest.py"), ("string_helper.py",),
     "Write pytest tests for string_helper covering normal and edge cases, with shared fixtures in conftest.py."),
    ("telemetry-p7-number-tests", "tests", "low", ("test_number_helper.py",), ("number_helper.py", "conftest.py"),
     "Write pytest tests for number_helper covering normal and edge cases."),
    ("telemetry-p8-list-tests", "tests", "medium", ("test_list_helper.py",), ("list_helper.py", "conftest.py"),
     "Write pytest tests for list_helper covering normal and edge cases."),
    ("telemetry-p9-readme", "docs", "low", ("README.md",), ("string_helper.py", "number_helper.py", "list_helper.py"),
     "Write README.md for the helper modules: at most 150 lines, a bullet-style overview of each module and "
     "one short call per function."),
    ("telemetry-p10-file-util", "implementation", "medium", ("file_helper.py",), (),
     "Write file_helper.py with read_json(path), write_json(path, data), read_lines(path) and "
     "write_lines(path, lines), using pathlib and utf-8."),
)


def telemetry_collection_v4_spec(run_id: str = V4_RUN_ID) -> RunSpec:
    """The original's seed run (telemetry-collection-v4), under any run id."""
    return _spec(run_id, "Telemetry collection: small utility modules, tests and a README.",
                 "examples/telemetry_utils", V4_ROWS)


# --------------------------------------------------------------------------------------------------
# v5: 25 phases, 15 implementation, 7 "tests", 3 docs
# --------------------------------------------------------------------------------------------------
_V5_MODULES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("slug", "low", ("slug_helper.py",), "slugify(text) and unslugify(slug)"),
    ("wrap", "low", ("wrap_helper.py",), "wrap_text(text, width) and indent_lines(text, prefix)"),
    ("money", "low", ("money_helper.py",), "parse_amount(text) and format_amount(cents, currency)"),
    ("color", "low", ("color_helper.py",), "hex_to_rgb(code) and rgb_to_hex(r, g, b)"),
    ("retry", "low", ("retry_helper.py",), "retry(fn, attempts, delay) with a pluggable sleep"),
    ("csv", "medium", ("csv_helper.py",), "read_rows(path), write_rows(path, rows) and column(rows, name)"),
    ("cache", "medium", ("cache_helper.py",), "an LRU cache class with get, put, evict and stats"),
    ("ini", "medium", ("ini_helper.py", "ini_types.py"), "parse_ini(text) into typed sections, and to_ini(data)"),
    ("path", "medium", ("path_helper.py",), "safe_join(root, rel), ensure_dir(path) and relative_to(a, b)"),
    ("time", "medium", ("time_helper.py",), "parse_duration('1h30m'), format_duration(seconds) and is_expired"),
    ("events", "medium", ("event_bus.py",), "an event bus with subscribe, unsubscribe and publish"),
    ("validate", "medium", ("validate_helper.py", "validate_rules.py"), "rule-based validation of dict records"),
    ("graph", "high", ("graph_helper.py",), "topological_sort(edges), find_cycles(edges) and shortest_path"),
    ("query", "high", ("query_parser.py", "query_eval.py"), "parse and evaluate filter expressions like 'a > 1 and b'"),
    ("scheduler", "high", ("job_scheduler.py",), "a cron-like scheduler: parse schedules and compute next runs"),
)
_V5_TESTS: tuple[tuple[str, str, str], ...] = (
    ("slug", "low", "slug_helper.py"),
    ("wrap", "low", "wrap_helper.py"),
    ("money", "low", "money_helper.py"),
    ("color", "low", "color_helper.py"),
    ("csv", "medium", "csv_helper.py"),
    ("cache", "medium", "cache_helper.py"),
    ("graph", "medium", "graph_helper.py"),
)


def telemetry_collection_v5_spec(run_id: str = V5_RUN_ID) -> RunSpec:
    rows: list[Row] = []
    for i, (name, cx, files, what) in enumerate(_V5_MODULES, start=1):
        rows.append((f"v5-p{i:02d}-{name}-impl", "implementation", cx, files, (),
                     f"Write {', '.join(files)}: {what}. Typed, with docstrings; standard library only."))
    for j, (name, cx, module) in enumerate(_V5_TESTS, start=len(rows) + 1):
        rows.append((f"v5-p{j:02d}-{name}-tests", "tests", cx, (f"test_{module}",), (module,),
                     f"Write pytest tests for {module} covering normal and edge cases."))
    rows += [
        (f"v5-p{len(rows) + 1:02d}-readme", "docs", "low", ("README.md",), ("slug_helper.py", "wrap_helper.py"),
         "Write README.md: at most 150 lines, a bullet-style overview of the text helpers."),
        (f"v5-p{len(rows) + 2:02d}-design", "docs", "low", ("DESIGN.md",), ("event_bus.py", "job_scheduler.py"),
         "Write DESIGN.md: at most 150 lines, high-level architecture of the event bus and scheduler only."),
        (f"v5-p{len(rows) + 3:02d}-usage", "docs", "medium", ("USAGE.md",),
         ("csv_helper.py", "cache_helper.py", "graph_helper.py"),
         "Write USAGE.md: at most 200 lines, one or two short calls per public function."),
    ]
    return _spec(run_id, "Telemetry collection v5: text, data and scheduling helpers.", "examples/toolkit_v5", rows)


# --------------------------------------------------------------------------------------------------
# v6: 20 phases, 10 docs/low, 2 docs/medium, 2 implementation/medium, 6 "testing"/medium
# --------------------------------------------------------------------------------------------------
_V6_DOCS_LOW: tuple[tuple[str, str], ...] = (
    ("install", "INSTALL.md: installation steps on Linux, macOS and Windows"),
    ("config", "CONFIGURATION.md: every setting with its default and one line on why"),
    ("faq", "FAQ.md: ten short questions and answers"),
    ("contrib", "CONTRIBUTING.md: how to set up, run checks and send a change"),
    ("security", "SECURITY.md: how to report a vulnerability and what to expect"),
    ("glossary", "GLOSSARY.md: the project's terms, one line each"),
    ("troubleshoot", "TROUBLESHOOTING.md: five common problems, cause and fix"),
    ("cli", "CLI.md: each command and flag, one line each"),
    ("changelog", "CHANGELOG.md: entries for releases 0.1.0 to 0.3.0"),
    ("roadmap", "ROADMAP.md: the next three milestones in bullets"),
)


def telemetry_collection_v6_spec(run_id: str = V6_RUN_ID) -> RunSpec:
    rows: list[Row] = []
    for name, what in _V6_DOCS_LOW:
        filename = what.split(":", 1)[0]
        rows.append((f"v6-{name}-docs", "docs", "low", (filename,), ("config_loader.py",),
                     f"Write {what}. At most 150 lines, bullet-style."))
    rows += [
        ("v6-architecture-docs", "docs", "medium", ("ARCHITECTURE.md",), ("config_loader.py", "plugin_registry.py"),
         "Write ARCHITECTURE.md: at most 200 lines, high-level components and data flow only."),
        ("v6-operations-docs", "docs", "medium", ("OPERATIONS.md",), ("config_loader.py",),
         "Write OPERATIONS.md: at most 200 lines on deploying, monitoring and backing up the service."),
        ("v6-config-impl", "implementation", "medium", ("config_loader.py",), (),
         "Write config_loader.py: load settings from a TOML file and environment variables, with defaults."),
        ("v6-plugin-impl", "implementation", "medium", ("plugin_registry.py",), (),
         "Write plugin_registry.py: register, look up and list plugins by name, with entry validation."),
    ]
    for i, (module, what) in enumerate(
        (
            ("config_loader.py", "file loading"),
            ("config_loader.py", "environment overrides"),
            ("config_loader.py", "defaults and errors"),
            ("plugin_registry.py", "registration"),
            ("plugin_registry.py", "look-up and listing"),
            ("plugin_registry.py", "validation errors"),
        ),
        start=1,
    ):
        rows.append((f"v6-t{i}-testing", "testing", "medium", (f"test_{module[:-3]}_{i}.py",), (module,),
                     f"Write pytest tests for {module}: {what}, normal and edge cases."))
    return _spec(run_id, "Telemetry collection v6: docs-heavy, targeted at docs/low and testing/medium.",
                 "examples/service_v6", rows)


# --------------------------------------------------------------------------------------------------
# v7: 6 phases, 3 docs/medium, 1 tests/low, 2 tests/medium
# --------------------------------------------------------------------------------------------------
V7_ROWS: tuple[Row, ...] = (
    ("v7-api-docs", "docs", "medium", ("HTTP_INTERFACE.md",), ("server.py",),
     "Write HTTP_INTERFACE.md: at most 200 lines listing each route of server.py, its input and its output."),
    ("v7-data-docs", "docs", "medium", ("DATA_MODEL.md",), ("models.py",),
     "Write DATA_MODEL.md: at most 200 lines describing each table and its columns."),
    ("v7-ops-docs", "docs", "medium", ("RUNBOOK.md",), ("server.py",),
     "Write RUNBOOK.md: at most 200 lines on start, stop, health checks and recovery."),
    ("v7-models-tests", "tests", "low", ("test_models.py",), ("models.py",),
     "Write pytest tests for models.py: construction and field validation."),
    ("v7-server-tests", "tests", "medium", ("test_server.py", "conftest.py"), ("server.py",),
     "Write pytest tests for server.py routes with a shared client fixture in conftest.py."),
    ("v7-errors-tests", "tests", "medium", ("test_errors.py",), ("server.py", "conftest.py"),
     "Write pytest tests for server.py error handling: bad input, missing records, conflicts."),
)


def telemetry_collection_v7_spec(run_id: str = V7_RUN_ID) -> RunSpec:
    return _spec(run_id, "Telemetry collection v7: docs/medium and tests.", "examples/service_v7", V7_ROWS)


SEED_RUNS: dict[str, Callable[[], RunSpec]] = {
    V4_RUN_ID: telemetry_collection_v4_spec,
    V5_RUN_ID: telemetry_collection_v5_spec,
    V6_RUN_ID: telemetry_collection_v6_spec,
    V7_RUN_ID: telemetry_collection_v7_spec,
}


#: Most weeks of seed collection one call creates (each week is the four seed runs again: 61 phases).
MAX_SEED_WEEKS = 52


_SEED_PREFIX = "telemetry-collection-"


def week_run_id(run_id: str, week: int) -> str:
    """Week 1 is the seed run itself; week k > 1 repeats its phases as ``telemetry-collection-week<k>-v4`` …

    Drains take runs in run order (``autopack.run_order``: by id, the week number read as a number, so week 10
    follows week 9), so the weeks are drained in the order they were collected, as a team's weekly runs would
    be: the calibration's newest calls are then the last week's, of every group.
    """
    return run_id if week == 1 else run_id.replace(_SEED_PREFIX, f"{WEEK_PREFIX}{week}-", 1)


def seed_run_spec(run_id: str) -> RunSpec:
    """The spec of a seed run, or of one of its later weeks (same phases, its own run id)."""
    week = week_of(run_id)
    if week and (seed := f"{_SEED_PREFIX}{week[1][1:]}") in SEED_RUNS and 2 <= week[0] <= MAX_SEED_WEEKS:
        return SEED_RUNS[seed]().model_copy(update={"run_id": run_id})
    try:
        return SEED_RUNS[run_id]()
    except KeyError:
        raise InputError(f"unknown seed run '{run_id}'", hint=f"one of {', '.join(SEED_RUNS)}") from None


def seed_run_ids(weeks: int = 1) -> list[str]:
    """The seed runs of ``weeks`` weeks of collection, oldest week first.

    One week (61 phases, 6–13 per group) is rarely enough to calibrate: a group needs about 22 fitted calls
    before a distribution-free factor can ship at α = 5 % (docs/calibration.md), so the quickstart collects
    three weeks with the simulated provider, as a team would over three weekly runs.
    """
    if not 1 <= weeks <= MAX_SEED_WEEKS:
        raise InputError(f"--weeks must be between 1 and {MAX_SEED_WEEKS}, got {weeks}")
    return [week_run_id(run_id, week) for week in range(1, weeks + 1) for run_id in SEED_RUNS]


def ensure_seed_runs(session: Session, run_ids: Sequence[str] | None = None) -> list[str]:
    """Create the seed runs that do not exist yet (in the caller's transaction); return their ids."""
    wanted = list(run_ids) if run_ids is not None else list(SEED_RUNS)
    specs = [seed_run_spec(run_id) for run_id in wanted]  # validate every id before writing anything
    created: list[str] = []
    for spec in specs:
        if session.get(Run, spec.run_id) is None:
            create_run(session, spec, source="seed")
            created.append(spec.run_id)
    return created
