"""What the spool's SQLite index holds: the schema, the states, and the records read from it.

The states are the spool's state machine (see :mod:`samie_node.spool`); the SQL CHECK constraints match
the ``Literal`` types, so a state that is not one of them cannot be written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

StudyState = Literal["receiving", "ready", "processing", "done", "failed"]
OutputState = Literal["pending", "retrying", "sent", "dead"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('receiving', 'ready', 'processing', 'done', 'failed')),
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
    result TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS studies_state ON studies (state, last_received);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_instance_uid);
CREATE TABLE IF NOT EXISTS outputs (
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
    UNIQUE (sop_instance_uid, destination)
);
CREATE INDEX IF NOT EXISTS outputs_state ON outputs (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY, checked_at REAL NOT NULL);
"""


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
