"""``autopack telemetry import``: CSV, OTLP JSON and V2 log lines; bad rows by line; all or nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_runner import run_cli

from autopack.db.engine import get_engine
from autopack.db.handle import open_database
from autopack.db.models import TokenEstimationV2Event
from autopack.errors import DbIdentityMismatchError, InputError
from autopack.telemetry.ingest import import_telemetry

DATA = Path(__file__).resolve().parents[1] / "data"
V5_LOG = DATA / "autopack_v5_drain_tokenestimationv2.log"
B132_LOG = DATA / "autopack_build132_tokenestimationv2.log"
EV = TokenEstimationV2Event.__table__

CANONICAL_CSV = """timestamp,run_id,phase_id,category,complexity,deliverable_count,predicted_output_tokens,actual_output_tokens,selected_budget,actual_max_tokens,truncated,success,model
2025-01-01T10:00:00Z,r1,p1,implementation,low,1,3424,1600,8192,8192,false,true,m1
2025-01-01T10:01:00Z,r1,p2,testing,MEDIUM,2,6890,5100,8192,8192,false,true,m1
2025-01-01 10:02:00.1234567,r1,p3,documentation,low,1,2600,4096,4096,4096,true,false,m1
"""


def rows(url: str) -> list[dict[str, object]]:
    with get_engine(url).connect() as connection:
        return [dict(r) for r in connection.execute(sa.select(EV).order_by(EV.c.event_id)).mappings()]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- CSV ---------------------------------------------------------------------------------------------


def test_canonical_csv_needs_no_mapping(db_url: str, tmp_path: Path) -> None:
    path = write(tmp_path, "calls.csv", CANONICAL_CSV)
    report = import_telemetry(path, "csv", database=open_database(db_url, allow_empty=True))
    assert report.rows == 3 and report.source == "import:csv:calls.csv"
    got = rows(db_url)
    assert [(r["category"], r["complexity"]) for r in got] == [
        ("implementation", "low"), ("tests", "medium"), ("docs", "low")
    ]
    assert all(r["source"] == "import:csv:calls.csv" for r in got)
    third = got[2]
    assert third["truncated"] is True and third["is_truncated_output"] is True and third["success"] is False
    assert third["actual_max_tokens"] == 4096 and third["timestamp"].microsecond == 123456
    assert got[0]["waste_ratio"] == pytest.approx(3424 / 1600)


def test_an_unknown_category_is_kept_and_named_in_a_warning(db_url: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Kept as written (never defaulted), and named: a typo must not pass as a new group unseen."""
    path = write(tmp_path, "calls.csv", CANONICAL_CSV.replace("r1,p1,implementation,low", "r1,p1,woodwork,low")
                 .replace("r1,p2,testing,MEDIUM", "r1,p2,woodwork,MEDIUM"))
    code, out, err = run_cli(capsys, "telemetry", "import", "--format", "csv", str(path))
    assert code == 0 and "imported 3 row(s)" in out
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert "unknown category 'woodwork' (2 rows): kept as written" in warning and "--map category=" in warning
    assert [r["category"] for r in rows(db_url)] == ["woodwork", "woodwork", "docs"]


def test_imported_rows_are_stored_exactly_as_the_orm_stores_them(db_url: str, tmp_path: Path) -> None:
    """The import writes through the driver; the stored text of times and flags must not differ for it."""
    import_telemetry(write(tmp_path, "calls.csv", CANONICAL_CSV), "csv", database=open_database(db_url, allow_empty=True))
    imported = rows(db_url)[0]  # 10:00:00 sharp: no microseconds, which a driver's own adapter would drop
    with get_engine(db_url).begin() as connection:
        copy = {k: v for k, v in imported.items() if k != "event_id"}
        connection.execute(sa.insert(EV), [{**copy, "call_index": 1}])
        raw = connection.exec_driver_sql(
            "SELECT timestamp, created_at, success, truncated, smape_percent FROM token_estimation_v2_events "
            "WHERE phase_id = 'p1' ORDER BY call_index").all()
    assert len(raw) == 2 and raw[0] == raw[1]


def test_minimal_csv_gets_defaults_and_collision_free_keys(db_url: str, tmp_path: Path) -> None:
    text = ("timestamp,category,complexity,predicted_output_tokens,actual_output_tokens,actual_max_tokens,truncated\n"
            "2025-01-01 10:00:00,docs,low,100,90,1000,false\n"
            "2025-01-01 10:00:01,docs,low,100,1000,1000,true\n")
    import_telemetry(write(tmp_path, "azure_conv.csv", text), "csv", database=open_database(db_url, allow_empty=True))
    got = rows(db_url)
    assert [(r["run_id"], r["phase_id"], r["attempt_index"], r["call_index"]) for r in got] == [
        ("import-azure_conv", "1", 0, 0), ("import-azure_conv", "2", 0, 0)
    ]
    assert [r["success"] for r in got] == [True, True]
    assert got[1]["selected_budget"] == 1000 and got[0]["features_json"] is None


def test_mapped_csv_derives_truncation_from_the_finish_reason(db_url: str, tmp_path: Path) -> None:
    text = ("when,kind,size,guess,got,cap,why\n"
            "1700000000,backend,high,500,480,512,stop\n"
            "1700000060,backend,high,500,512,512,length\n")
    path = write(tmp_path, "mine.csv", text)
    mapping = {"timestamp": "when", "category": "kind", "complexity": "size", "predicted_output_tokens": "guess",
               "actual_output_tokens": "got", "actual_max_tokens": "cap", "finish_reason": "why"}
    import_telemetry(path, "csv", mapping=mapping, database=open_database(db_url, allow_empty=True))
    got = rows(db_url)
    assert [r["truncated"] for r in got] == [False, True]
    assert got[0]["timestamp"].year == 2023 and got[1]["finish_reason"] == "length"


def test_bad_rows_are_reported_by_line_and_nothing_is_imported(db_url: str, tmp_path: Path) -> None:
    text = CANONICAL_CSV + (
        "2025-01-01T10:03:00Z,r1,p4,implementation,low,1,abc,1600,8192,8192,false,true,m1\n"
        "not-a-time,r1,p5,implementation,low,1,3424,1600,8192,8192,false,true,m1\n"
        "2025-01-01T10:05:00Z,r1,p6,implementation,low,1,3424,,8192,8192,maybe,true,m1\n"
    )
    with pytest.raises(InputError) as info:
        import_telemetry(write(tmp_path, "bad.csv", text), "csv", database=open_database(db_url, allow_empty=True))
    message = info.value.message
    assert "3 bad row(s)" in message and "nothing imported" in message
    assert "line 5: predicted_output_tokens 'abc'" in message
    assert "line 6: timestamp 'not-a-time'" in message
    assert "line 7: truncated 'maybe'" in message and "line 7: missing actual_output_tokens" in message
    assert rows(db_url) == []


def test_missing_required_column_is_refused(db_url: str, tmp_path: Path) -> None:
    text = "timestamp,category,complexity,predicted_output_tokens,actual_output_tokens\n2025-01-01,docs,low,1,2\n"
    with pytest.raises(InputError, match=r"line 2: missing actual_max_tokens"):
        import_telemetry(write(tmp_path, "short.csv", text), "csv", database=open_database(db_url, allow_empty=True))


def test_unknown_mapped_column_is_refused(db_url: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no column 'nope'"):
        import_telemetry(write(tmp_path, "calls.csv", CANONICAL_CSV), "csv",
                         mapping={"category": "nope"}, database=open_database(db_url, allow_empty=True))


def test_importing_the_same_file_twice_is_refused_whole(db_url: str, tmp_path: Path) -> None:
    path = write(tmp_path, "calls.csv", CANONICAL_CSV)
    import_telemetry(path, "csv", database=open_database(db_url, allow_empty=True))
    with pytest.raises(InputError, match="collide with calls already in the database"):
        import_telemetry(path, "csv", database=open_database(db_url, allow_empty=True))
    assert len(rows(db_url)) == 3


def test_run_id_option_names_rows_that_have_none(db_url: str, tmp_path: Path) -> None:
    text = ("timestamp,category,complexity,predicted_output_tokens,actual_output_tokens,actual_max_tokens,truncated\n"
            "2025-01-01,docs,low,1,2,3,false\n")
    path = write(tmp_path, "c.csv", text)
    import_telemetry(path, "csv", database=open_database(db_url, allow_empty=True))
    import_telemetry(path, "csv", run_id="second-copy", database=open_database(db_url, allow_empty=True))
    assert sorted(r["run_id"] for r in rows(db_url)) == ["import-c", "second-copy"]


def test_duplicate_keys_inside_a_file_are_bad_rows(db_url: str, tmp_path: Path) -> None:
    text = ("timestamp,run_id,phase_id,attempt_index,call_index,category,complexity,predicted_output_tokens,"
            "actual_output_tokens,actual_max_tokens,truncated\n"
            "2025-01-01,r,p,0,0,docs,low,1,2,3,false\n2025-01-01,r,p,0,0,docs,low,1,2,3,false\n")
    with pytest.raises(InputError, match=r"line 3: same call key"):
        import_telemetry(write(tmp_path, "dup.csv", text), "csv", database=open_database(db_url, allow_empty=True))
    assert rows(db_url) == []


def test_repeated_phase_without_call_index_gets_distinct_call_indices(db_url: str, tmp_path: Path) -> None:
    text = ("timestamp,run_id,phase_id,category,complexity,predicted_output_tokens,actual_output_tokens,"
            "actual_max_tokens,truncated\n"
            "2025-01-01,r,p,docs,low,1,2,3,false\n2025-01-02,r,p,docs,low,1,2,3,false\n")
    import_telemetry(write(tmp_path, "calls.csv", text), "csv", database=open_database(db_url, allow_empty=True))
    assert [r["call_index"] for r in rows(db_url)] == [0, 1]


# --- OpenTelemetry GenAI spans ----------------------------------------------------------------------


def _attr(key: str, value: object) -> dict[str, object]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, list):
        return {"key": key, "value": {"arrayValue": {"values": [{"stringValue": v} for v in value]}}}
    return {"key": key, "value": {"stringValue": value}}


def _span(attrs: dict[str, object], start: int = 1_700_000_000_000_000_000) -> dict[str, object]:
    return {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "chat", "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(start + 10**9), "attributes": [_attr(k, v) for k, v in attrs.items()]}


def _otlp(spans: list[dict[str, object]]) -> dict[str, object]:
    return {"resourceSpans": [{"resource": {"attributes": [_attr("service.name", "agent")]},
                               "scopeSpans": [{"scope": {"name": "genai"}, "spans": spans}]}]}


COMMON = {"autopack.category": "implementation", "autopack.complexity": "medium",
          "autopack.predicted_output_tokens": 4000}


def test_otel_spans_with_current_and_deprecated_attribute_names(db_url: str, tmp_path: Path) -> None:
    spans = [
        _span({**COMMON, "gen_ai.usage.output_tokens": 1200, "gen_ai.request.max_tokens": 8192,
               "gen_ai.response.finish_reasons": ["stop"], "gen_ai.request.model": "claude-x",
               "gen_ai.provider.name": "anthropic", "gen_ai.usage.input_tokens": 900}),
        _span({**COMMON, "gen_ai.usage.completion_tokens": 8192, "gen_ai.request.max_tokens": 8192,
               "gen_ai.response.finish_reasons": ["length"], "gen_ai.request.model": "gpt-x",
               "gen_ai.system": "openai"}, start=1_700_000_060_000_000_000),
        {"name": "http", "startTimeUnixNano": "1", "attributes": [_attr("http.method", "GET")]},  # not GenAI
    ]
    path = write(tmp_path, "traces.json", json.dumps(_otlp(spans)))
    report = import_telemetry(path, "otel-json", database=open_database(db_url, allow_empty=True))
    assert report.rows == 2
    first, second = rows(db_url)
    assert (first["actual_output_tokens"], first["provider"], first["model"], first["input_tokens"]) == (
        1200, "anthropic", "claude-x", 900)
    assert first["truncated"] is False and first["actual_max_tokens"] == 8192
    assert (second["actual_output_tokens"], second["provider"], second["truncated"]) == (8192, "openai", True)
    assert first["source"] == "import:otel-json:traces.json" and first["predicted_output_tokens"] == 4000


def test_otel_json_lines_bad_span_reported_with_line_and_span(db_url: str, tmp_path: Path) -> None:
    good = _otlp([_span({**COMMON, "gen_ai.usage.output_tokens": 10, "gen_ai.request.max_tokens": 100})])
    bad = _otlp([_span({**COMMON, "gen_ai.request.max_tokens": 100}),  # no output tokens
                 _span({**COMMON, "gen_ai.usage.output_tokens": 10})])
    path = write(tmp_path, "traces.jsonl", json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(InputError) as info:
        import_telemetry(path, "otel-json", database=open_database(db_url, allow_empty=True))
    assert "line 2, span resourceSpans[0].scopeSpans[0].spans[0]: missing actual_output_tokens" in info.value.message
    assert rows(db_url) == []


def test_otel_constants_fill_fields_the_spans_lack(db_url: str, tmp_path: Path) -> None:
    spans = [_span({"gen_ai.usage.output_tokens": 300, "gen_ai.request.max_tokens": 1024,
                    "gen_ai.response.finish_reasons": ["stop"]})]
    path = write(tmp_path, "t.json", json.dumps(_otlp(spans)))
    import_telemetry(path, "otel-json",
                     defaults={"category": "chat", "complexity": "low", "predicted_output_tokens": "250"}, database=open_database(db_url, allow_empty=True))
    (row,) = rows(db_url)
    assert (row["category"], row["complexity"], row["predicted_output_tokens"]) == ("chat", "low", 250)


# --- the original's [TokenEstimationV2] lines ---------------------------------------------------------


def test_v2_log_lines_of_the_real_v5_drain(db_url: str) -> None:
    lines = [line for line in V5_LOG.read_text().splitlines() if "[TokenEstimationV2]" in line]
    report = import_telemetry(V5_LOG, "v2-log", database=open_database(db_url, allow_empty=True))
    got = rows(db_url)
    assert report.rows == len(got) == len(lines)
    expected_truncated = [("truncated=True" in line) for line in lines]
    assert [r["truncated"] for r in got] == expected_truncated
    first = re.search(r"predicted_output=(\d+) actual_output=(\d+)", lines[0])
    assert first and (got[0]["predicted_output_tokens"], got[0]["actual_output_tokens"]) == (
        int(first.group(1)), int(first.group(2)))
    assert got[0]["timestamp"].isoformat() == "2025-12-29T19:40:02"
    assert all(r["actual_max_tokens"] is None and r["source"] == f"import:v2-log:{V5_LOG.name}" for r in got)


def test_v2_log_headings_and_blank_lines_are_skipped(db_url: str) -> None:
    expected = sum(1 for line in B132_LOG.read_text().splitlines() if "[TokenEstimationV2]" in line)
    assert import_telemetry(B132_LOG, "v2-log", database=open_database(db_url, allow_empty=True)).rows == expected


def test_malformed_v2_line_is_a_bad_row(db_url: str, tmp_path: Path) -> None:
    text = V5_LOG.read_text().splitlines()[0] + "\n[2025-12-29 19:41:12] INFO: [TokenEstimationV2] predicted_output=x\n"
    with pytest.raises(InputError, match=r"line 2: predicted_output_tokens 'x'"):
        import_telemetry(write(tmp_path, "bad.log", text), "v2-log", database=open_database(db_url, allow_empty=True))
    assert rows(db_url) == []


# --- guard and CLI --------------------------------------------------------------------------------------


def test_import_is_guarded_by_the_expected_database_id(db_url: str, tmp_path: Path) -> None:
    with pytest.raises(DbIdentityMismatchError):
        import_telemetry(write(tmp_path, "c.csv", CANONICAL_CSV), "csv", database=open_database(db_url, allow_empty=True, expect_db_id="another-db"))
    assert rows(db_url) == []


def test_cli_import_and_its_errors(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "calls.csv", CANONICAL_CSV)
    code, out, _ = run_cli(capsys, "telemetry", "import", "--format", "csv", str(path))
    assert code == 0 and "imported 3 row(s)" in out  # filling an empty migrated database is the point
    code, _, err = run_cli(capsys, "telemetry", "import", "--format", "csv", str(path))
    errors = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "collide" in errors[0]
    code, _, err = run_cli(capsys, "telemetry", "import", "--format", "xml", str(path))
    assert code == 2 and "unknown --format" in err
    code, _, err = run_cli(capsys, "telemetry", "import", "--format", "csv", str(path), "--map", "nonsense")
    assert code == 2 and "field=value" in err
    code, out, _ = run_cli(capsys, "telemetry", "import", "--format", "v2-log", str(V5_LOG), "--json")
    assert code == 0 and json.loads(out)["rows"] == 25


# --- bad input: one line, nothing written (issue 11) ------------------------------------------------------

HEADER = "timestamp,category,complexity,predicted_output_tokens,actual_output_tokens,actual_max_tokens,truncated"


def one_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, _, err = run_cli(capsys, "telemetry", "import", *args)
    errors = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]



def test_a_directory_or_a_missing_file_is_named_as_what_it_is(db_url: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert one_error(capsys, str(tmp_path)) == f"error: {tmp_path} is a directory (name the file to import)"
    missing = tmp_path / "calls.csv"
    assert one_error(capsys, str(missing)) == f"error: no such file: {missing} (name the file to import)"
    assert rows(db_url) == []

def test_old_scripts_passing_allow_empty_db_still_work(db_url: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "calls.csv", CANONICAL_CSV)
    code, out, _ = run_cli(capsys, "telemetry", "import", str(path), "--allow-empty-db")
    assert code == 0 and "imported 3 row(s)" in out


def test_an_unmigrated_database_is_still_refused(empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    assert "autopack db upgrade" in one_error(capsys, str(write(tmp_path, "c.csv", CANONICAL_CSV)))


def test_a_huge_field_in_a_column_the_import_ignores_is_read(db_url: str, tmp_path: Path) -> None:
    text = HEADER + ",prompt\n" + f"2025-01-01,docs,low,10,9,100,false,{'x' * 300_000}\n"  # > csv's 128 KiB
    assert import_telemetry(write(tmp_path, "big.csv", text), "csv", database=open_database(db_url, allow_empty=True)).rows == 1


def test_a_field_over_the_bound_is_one_line_with_its_line_number(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv

    from autopack.telemetry.ingest import csv_rows

    monkeypatch.setattr(csv_rows, "MAX_CSV_FIELD_CHARS", 1000)  # the real bound is 16 Mi characters
    text = HEADER + "\n2025-01-01,docs,low,10,9,100,false\n" + f"2025-01-01,docs,low,10,9,100,{'y' * 2000}\n"
    line = one_error(capsys, str(write(tmp_path, "big.csv", text)))
    assert "line 3: unreadable CSV: a field is longer than 1,000 characters" in line and "nothing imported" in line
    assert rows(db_url) == [] and csv.field_size_limit() == 131072  # the process-wide limit is restored


def test_one_problem_on_every_row_is_named_once_with_its_count(db_url: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    body = "".join(f"2025-01-01,docs,low,10,{n},100\n" for n in range(1, 51))  # no truncated column at all
    text = "timestamp,category,complexity,predicted_output_tokens,actual_output_tokens,actual_max_tokens\n" + body
    line = one_error(capsys, str(write(tmp_path, "no_flag.csv", text)))
    assert "50 bad row(s), nothing imported: line 2, line 3, line 4 and 47 more: missing truncated" in line
    assert line.count("missing truncated") == 1 and "--set field=value" in line
    assert rows(db_url) == []


def test_problems_of_more_kinds_than_are_named_are_counted(db_url: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    body = "".join(f"2025-01-01,docs,low,10,bad{n},100,false\n" for n in range(25))  # 25 different values
    line = one_error(capsys, str(write(tmp_path, "odd.csv", HEADER + "\n" + body)))
    assert "25 bad row(s)" in line and line.count("actual_output_tokens 'bad") == 20
    assert line.endswith("… 5 more of other kinds (fix the rows, map their columns with --map field=column, "
                         "or give a missing field with --set field=value)")


@pytest.mark.parametrize("value", ["123456789012345678901234567890", "3000000000", "-5", "1e400", "9" * 400])
def test_token_counts_out_of_the_column_range_are_bad_rows(db_url: str, tmp_path: Path, value: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    text = HEADER + f"\n2025-01-01,docs,low,10,9,100,false\n2025-01-01,docs,low,10,{value},100,false\n"
    line = one_error(capsys, str(write(tmp_path, "big.csv", text)))
    assert "line 3:" in line and "actual_output_tokens" in line and "1 bad row(s), nothing imported" in line
    assert rows(db_url) == []


def test_a_model_name_longer_than_its_column_is_a_bad_row(db_url: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    text = HEADER + f",model\n2025-01-01,docs,low,10,9,100,false,{'m' * 300}\n"
    line = one_error(capsys, str(write(tmp_path, "long.csv", text)))
    assert "line 2: model is 300 characters long, the column holds 255" in line
    assert rows(db_url) == []


def test_an_output_that_reached_its_ceiling_is_truncated_whatever_the_row_says(db_url: str, tmp_path: Path) -> None:
    text = HEADER + ",finish_reason\n2025-01-01,docs,low,10,100,100,false,stop\n2025-01-01,docs,low,10,99,100,false,stop\n"
    import_telemetry(write(tmp_path, "cap.csv", text), "csv", database=open_database(db_url, allow_empty=True))
    assert [(r["truncated"], r["is_truncated_output"]) for r in rows(db_url)] == [(True, True), (False, False)]


def test_a_bad_row_after_written_batches_still_imports_nothing(db_url: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from autopack.telemetry.ingest import write as ingest_write

    monkeypatch.setattr(ingest_write, "INSERT_CHUNK", 2)  # several batches are in the transaction already
    good = "".join(f"2025-01-01,docs,low,10,{i},100,false\n" for i in range(1, 8))
    with pytest.raises(InputError, match="line 9: actual_output_tokens 'oops'"):
        import_telemetry(write(tmp_path, "late.csv", HEADER + "\n" + good + "2025-01-01,docs,low,10,oops,100,false\n"),
                         "csv", database=open_database(db_url, allow_empty=True))
    assert rows(db_url) == []


def test_a_clash_in_a_later_batch_rolls_back_the_earlier_ones(db_url: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from autopack.telemetry.ingest import write as ingest_write

    head = "timestamp,run_id,phase_id,category,complexity,predicted_output_tokens,actual_output_tokens,"
    head += "actual_max_tokens,truncated\n"
    import_telemetry(write(tmp_path, "one.csv", head + "2025-01-01,r,p9,docs,low,10,9,100,false\n"), "csv", database=open_database(db_url, allow_empty=True))
    monkeypatch.setattr(ingest_write, "INSERT_CHUNK", 3)
    many = "".join(f"2025-01-01,r,p{i},docs,low,10,9,100,false\n" for i in range(1, 11))  # p9 is taken
    with pytest.raises(InputError, match=r"1 row\(s\) collide with calls already in the database"):
        import_telemetry(write(tmp_path, "many.csv", head + many), "csv", database=open_database(db_url, allow_empty=True))
    assert [r["phase_id"] for r in rows(db_url)] == ["p9"]


def _otel_file(tmp_path: Path, doc: object) -> Path:
    return write(tmp_path, "t.json", json.dumps(doc))


GOOD_SPAN = _span({**COMMON, "gen_ai.usage.output_tokens": 10, "gen_ai.request.max_tokens": 100,
                   "gen_ai.response.finish_reasons": ["stop"]})

MALFORMED_OTEL = {
    "document is a list": ([1, 2], "not an OTLP traces document"),
    "resourceSpans is an object": ({"resourceSpans": {"a": 1}}, "not an OTLP traces document"),
    "resourceSpans item is a string": ({"resourceSpans": ["x"]}, "resourceSpans[0] is a string, not an object"),
    "resource is a list": ({"resourceSpans": [{"resource": [], "scopeSpans": []}]},
                           "resourceSpans[0].resource is a list, not an object"),
    "resource attributes is a string": ({"resourceSpans": [{"resource": {"attributes": "x"}}]},
                                        "resource.attributes is a string, not a list"),
    "scopeSpans is a number": ({"resourceSpans": [{"scopeSpans": 5}]}, "scopeSpans is a number, not a list"),
    "scopeSpans item is null": ({"resourceSpans": [{"scopeSpans": [None]}]}, "scopeSpans[0] is null"),
    "spans is an object": ({"resourceSpans": [{"scopeSpans": [{"spans": {}}]}]}, "spans is an object, not a list"),
    "span is a number": ({"resourceSpans": [{"scopeSpans": [{"spans": [7]}]}]}, "the span is a number"),
    "attributes is an object": (_otlp([{**GOOD_SPAN, "attributes": {"k": "v"}}]),
                                "attributes is an object, not a list"),
    "attribute is a string": (_otlp([{**GOOD_SPAN, "attributes": ["gen_ai.x"]}]),
                              "attributes[0] is a string, not an object"),
    "attribute key is a number": (_otlp([{**GOOD_SPAN, "attributes": [{"key": 1, "value": {}}]}]),
                                  "attributes[0].key is a number, not a string"),
    "attribute value is a string": (_otlp([{**GOOD_SPAN, "attributes": [{"key": "gen_ai.a", "value": "v"}]}]),
                                    "attributes[0].value (gen_ai.a) is a string, not an object"),
    "intValue is not an integer": (
        _otlp([{**GOOD_SPAN, "attributes": [{"key": "gen_ai.usage.output_tokens", "value": {"intValue": "1.5x"}}]}]),
        "intValue '1.5x' is not an integer"),
    "stringValue is a number": (
        _otlp([{**GOOD_SPAN, "attributes": [{"key": "gen_ai.request.model", "value": {"stringValue": 3}}]}]),
        "stringValue is a number, not a string"),
    "boolValue is a string": (
        _otlp([{**GOOD_SPAN, "attributes": [{"key": "gen_ai.x", "value": {"boolValue": "yes"}}]}]),
        "boolValue is a string, not true/false"),
    "arrayValue values is a string": (
        _otlp([{**GOOD_SPAN, "attributes": [{"key": "gen_ai.response.finish_reasons",
                                             "value": {"arrayValue": {"values": "stop"}}}]}]),
        "arrayValue.values is a string, not a list"),
    "startTimeUnixNano is text": (_otlp([{**GOOD_SPAN, "startTimeUnixNano": "yesterday"}]),
                                  "startTimeUnixNano 'yesterday' is not a count of nanoseconds"),
    "startTimeUnixNano is out of range": (_otlp([{**GOOD_SPAN, "startTimeUnixNano": "9" * 30}]),
                                          "is not a time"),
    "output tokens over 64 bits": (
        _otlp([_span({**COMMON, "gen_ai.usage.output_tokens": 2**70, "gen_ai.request.max_tokens": 100,
                      "gen_ai.response.finish_reasons": ["stop"]})]),
        "actual_output_tokens=1180591620717411303424 is outside"),
}


@pytest.mark.parametrize("case", list(MALFORMED_OTEL))
def test_malformed_otel_shapes_are_one_line_each(db_url: str, tmp_path: Path, case: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    doc, expected = MALFORMED_OTEL[case]
    line = one_error(capsys, "--format", "otel-json", str(_otel_file(tmp_path, doc)))
    assert expected in line and "nothing imported" in line
    assert rows(db_url) == []


def test_a_malformed_span_does_not_hide_the_good_ones_errors(db_url: str, tmp_path: Path) -> None:
    doc = _otlp([7, GOOD_SPAN, {**GOOD_SPAN, "startTimeUnixNano": "x"}])
    with pytest.raises(InputError) as info:
        import_telemetry(_otel_file(tmp_path, doc), "otel-json", database=open_database(db_url, allow_empty=True))
    assert "2 bad row(s)" in info.value.message and "spans[0]" in info.value.message
    assert "spans[2]" in info.value.message and rows(db_url) == []


def test_two_processes_importing_the_same_file_at_once_write_it_once(db_url: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    n = 12_000  # several batches each, so the two transactions overlap
    path = write(tmp_path, "same.csv", HEADER + "\n" + "".join(
        f"2025-01-01 00:00:{i % 60:02d},docs,low,100,{i},100000,false\n" for i in range(1, n + 1)))
    code = "import sys; from autopack.cli import main; main(['telemetry', 'import', sys.argv[1]])"
    env = {**os.environ, "DATABASE_URL": db_url}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], env=env, cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = sorted((p.wait(timeout=300), *p.communicate()) for p in procs)
    (won, won_out, _), (lost, _, lost_err) = results
    assert won == 0 and f"imported {n} row(s)" in won_out
    errors = [line for line in lost_err.strip().splitlines() if line.startswith("error:")]
    assert lost == 2 and len(errors) == 1 and "Traceback" not in lost_err
    assert f"{n} row(s) collide with calls already in the database" in errors[0] and "nothing imported" in errors[0]
    with get_engine(db_url).connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(EV)).scalar_one() == n


def test_a_sqlite_file_locked_by_another_writer_is_one_line_and_nothing_imported(
        db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL writers wait on rows, not on the file")
    import sqlite3

    from autopack.db import engine
    from autopack.telemetry.ingest import DatabaseBusyError

    engine.dispose_engines()
    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_MS", 100)  # the engine is made anew with it
    holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds SQLite's one write slot
    try:
        with pytest.raises(DatabaseBusyError, match="stayed locked by another writer"):
            import_telemetry(write(tmp_path, "calls.csv", CANONICAL_CSV), "csv", database=open_database(db_url, allow_empty=True))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        engine.dispose_engines()
    assert rows(db_url) == []
