"""``GET /health``: is the database reachable and migrated, and *which* database is it."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Security

from autopack import __version__
from autopack.api.deps import API_KEY_HEADER, ConfigDep, refuse_missing_database_file
from autopack.api.inputs import StrictJsonRoute
from autopack.api.schemas import HealthOut
from autopack.api.security import key_matches
from autopack.db.handle import Database
from autopack.db.identity import schema_problem
from autopack.db.migrate import current_revision, head_revision, read_db_id, sqlite_path
from autopack.errors import AutopackError

router = APIRouter(tags=["health"], route_class=StrictJsonRoute)


def database_identity(database: Database) -> str:
    """12 hex chars of sha256 of the masked, slash-normalised URL (the original's ``database_identity``)."""
    return hashlib.sha256(database.masked_url.replace("\\", "/").encode("utf-8")).hexdigest()[:12]


def probe(database: Database) -> tuple[bool, str | None, str | None]:
    """(reachable, db id, schema revision), read-only; never creates a missing SQLite file."""
    try:
        path = sqlite_path(database.url)
    except AutopackError:  # a URL autopack cannot use: not reachable
        return False, None, None
    if path is not None and not path.exists():
        return False, None, None
    try:
        with database.engine.connect() as connection:
            revision = current_revision(connection)
            db_id = read_db_id(connection)
    except Exception:  # any failure to read is "not ok", reported as such rather than raised
        return False, None, None
    return True, db_id, revision


def database_problem(database: Database) -> AutopackError | None:
    """Why requests cannot use ``database`` — a URL autopack cannot use, a missing SQLite file, no schema or
    an older one — as the one line the CLI would give (minus the URL: reads are open), or None (usable, or
    merely unreachable). Read-only; a missing SQLite file is not created."""
    try:
        refuse_missing_database_file(database)
    except AutopackError as exc:
        return exc
    reachable, _db_id, revision = probe(database)
    return schema_problem(revision, "the database") if reachable else None


@router.get("/health", response_model=HealthOut)
def health(config: ConfigDep, x_api_key: Annotated[str | None, Security(API_KEY_HEADER)] = None) -> HealthOut:
    """A read (open to all); a client that sends its key learns whether it would be accepted for writes."""
    reachable, db_id, revision = probe(config.database)
    expected = head_revision()
    ok = reachable and db_id is not None and revision == expected
    return HealthOut(
        status="ok" if ok else "degraded",
        db_ok=ok,
        db_id=db_id,
        schema_revision=revision,
        expected_revision=expected,
        database_identity=database_identity(config.database),
        version=__version__,
        key_accepted=None if x_api_key is None else key_matches(x_api_key, config.api_key),
    )
