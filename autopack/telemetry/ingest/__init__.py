"""Import outside telemetry into ``token_estimation_v2_events``: CSV, OTLP JSON (GenAI spans), V2 log lines.

A file is read as a stream and written in batches inside one transaction, so memory stays flat (10⁶ CSV
rows in well under 512 MB, bench/bench_import.py) and the import is still all or nothing: any bad row
(reported by line number), any number its column cannot hold, any call key already in the database
(another import that committed first included) rolls the whole transaction back. Imported rows carry their origin in
``source`` (``import:<format>:<file name>``), canonical category/complexity (normalised on entry), and
keys that cannot collide with recorded calls: run_id ``import-<file stem>`` unless given, phase_id the
row's line/span number unless given, call_index counting repeats of a (run, phase) within the file.

Modules: ``rows`` (fields shared by every format, one row → typed, checked values), one parser per format
(``csv_rows``, ``otel``, ``v2_log``), ``events`` (checked rows → event rows) and ``write`` (the transaction).
"""

from autopack.telemetry.ingest.events import FORMATS, escalated_from, iter_events, source_of
from autopack.telemetry.ingest.rows import parse_assignments, parse_timestamp
from autopack.telemetry.ingest.write import DatabaseBusyError, ImportReport, import_telemetry

__all__ = [
    "FORMATS",
    "DatabaseBusyError",
    "ImportReport",
    "escalated_from",
    "import_telemetry",
    "iter_events",
    "parse_assignments",
    "parse_timestamp",
    "source_of",
]
