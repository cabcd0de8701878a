"""What the spool's SQLite index holds: the schema (and its migrations), the states, and the records read
from it.

The states are the spool's state machine (see :mod:`samie_node.spool`); the SQL CHECK constraints match
the ``Literal`` types, so a state that is not one of them cannot be written.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from samie_node.errors import SpoolError

StudyState = Literal["receiving", "ready", "processing", "done", "failed", "purged"]
OutputState = Literal["pending", "retrying", "sent", "dead"]
PurgeReason = Literal["policy", "emergency", "operator"]

#: ``PRAGMA user_version`` of the index this code writes; :data:`MIGRATIONS` brings older ones up to it.
SCHEMA_VERSION = 1

_STUDIES = """
CREATE TABLE studies (
    study_instance_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('receiving', 'ready', 'processing', 'done', 'failed', 'purged')),
    accession_number TEXT NOT NULL DEFAULT '',
    study_date TEXT NOT NULL DEFAULT '',
    calling_ae_title TEXT NOT NULL DEFAULT '',
    calling_host TEXT NOT NULL DEFAULT '',
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    state_changed REAL NOT NULL,
    reopened INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL DEFAULT '{}',
    purged_at REAL,
    results_purged_at REAL,
    bytes_freed INTEGER NOT NULL DEFAULT 0
)"""

# A purge in progress: its row is written before the first file goes and deleted after the last, so a
# crash in between leaves a row that start-up finishes (see samie_node.purge).
_PURGES = """
CREATE TABLE purges (
    study_instance_uid TEXT PRIMARY KEY,
    reason TEXT NOT NULL CHECK (reason IN ('policy', 'emergency', 'operator')),
    instances INTEGER NOT NULL,
    results INTEGER NOT NULL,
    started_at REAL NOT NULL,
    instance_files INTEGER NOT NULL DEFAULT 0,
    files INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0
)"""

# Studies a resend or retrieve is using; retention leaves them alone while the holder lives.
_LEASES = """
CREATE TABLE leases (
    study_instance_uid TEXT NOT NULL,
    holder TEXT NOT NULL,
    pid INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (study_instance_uid, holder, pid)
)"""

#: A new index, statement by statement (run in one transaction with the version pragma).
SCHEMA: tuple[str, ...] = (
    _STUDIES,
    "CREATE INDEX studies_state ON studies (state, last_received)",
    """CREATE TABLE instances (
    sop_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    purging INTEGER NOT NULL DEFAULT 0
)""",
    "CREATE INDEX instances_study ON instances (study_instance_uid)",
    """CREATE TABLE outputs (
    id INTEGER PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'retrying', 'sent', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    sent_at REAL,
    purging INTEGER NOT NULL DEFAULT 0,
    purged_at REAL,
    UNIQUE (sop_instance_uid, destination)
)""",
    "CREATE INDEX outputs_state ON outputs (state, next_attempt_at)",
    "CREATE INDEX outputs_study ON outputs (study_instance_uid)",
    "CREATE TABLE health (id INTEGER PRIMARY KEY, checked_at REAL NOT NULL)",
    _PURGES,
    _LEASES,
)

#: version -> the statements that bring an index of the version before it up to it. SQLite cannot change
#: a CHECK constraint in place, so a new study state means a new table, copied, swapped in (SQLite's
#: documented procedure for schema changes it cannot ALTER), in the same transaction as the version.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        # version 0 -> 1: retention (state 'purged', what was freed, purges in progress, leases)
        _STUDIES.replace("CREATE TABLE studies", "CREATE TABLE studies_v1"),
        "INSERT INTO studies_v1 (study_instance_uid, state, accession_number, study_date, calling_ae_title,"
        " calling_host, first_received, last_received, state_changed, reopened, attempts, reason, result)"
        " SELECT study_instance_uid, state, accession_number, study_date, calling_ae_title, calling_host,"
        " first_received, last_received, state_changed, reopened, attempts, reason, result FROM studies",
        "DROP TABLE studies",
        "ALTER TABLE studies_v1 RENAME TO studies",
        "CREATE INDEX studies_state ON studies (state, last_received)",
        "ALTER TABLE instances ADD COLUMN purging INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE outputs ADD COLUMN purging INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE outputs ADD COLUMN purged_at REAL",
        "CREATE INDEX outputs_study ON outputs (study_instance_uid)",
        # version 0 indexes written after the readiness check came have it already
        "CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY, checked_at REAL NOT NULL)",
        _PURGES,
        _LEASES,
    ),
}


def open_schema(db: sqlite3.Connection, where: Path) -> None:
    """Create the index's tables in a new index, or bring an older one up to :data:`SCHEMA_VERSION`; run
    inside one write transaction (the version pragma is part of it).

    Raises
    ------
    SpoolError
        If the index was written by a newer samie-node (its version is higher than this code knows).
    """
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise SpoolError(f"the index at {where} was written by a newer samie-node (version {version})")
    if version == SCHEMA_VERSION:
        return
    fresh = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'studies'").fetchone() is None
    steps = range(version + 1, SCHEMA_VERSION + 1)
    for sql in SCHEMA if fresh else [sql for step in steps for sql in MIGRATIONS[step]]:
        db.execute(sql)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@dataclass(frozen=True)
class InstanceRecord:
    """One stored instance as the index knows it."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int


@dataclass(frozen=True)
class StudyRecord:
    """One study as the index knows it."""

    study_instance_uid: str
    state: StudyState
    instances: int
    accession_number: str
    study_date: str
    calling_ae_title: str
    calling_host: str
    first_received: float
    last_received: float
    attempts: int
    reason: str
    result: dict[str, Any]
    purged_at: float | None = None
    results_purged_at: float | None = None
    bytes_freed: int = 0


@dataclass(frozen=True)
class OutputRecord:
    """One result waiting for, or done with, delivery to one destination."""

    id: int
    study_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    path: Path
    destination: str
    state: OutputState
    attempts: int
    next_attempt_at: float
    last_error: str
    purged_at: float | None = None


@dataclass(frozen=True)
class IncomingInstance:
    """What the receiver knows about an instance before it is stored (all UIDs already validated)."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    accession_number: str = ""
    study_date: str = ""
    calling_ae_title: str = ""
    calling_host: str = ""
