"""The durable store: received instances on disk, a SQLite index of instances, studies and outputs.

Files live at ``spool/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``; every UID was
validated before it became a path part. A file is written to a temporary name in its final folder,
fsynced, renamed into place and the folder fsynced; only then is its index row written and Success
returned to the sender. The file on disk is the truth: on start-up :meth:`Spool.reconcile` removes
temporary leftovers, indexes files the index missed and forgets rows whose file is gone, so a crash at
any point loses nothing that was acknowledged.

Study states::

    receiving --(quiet period)--> ready --> processing --> done | failed
        ^                                                    |
        +---------------- a late instance re-opens ----------+

Output (outbox) states: pending, retrying, sent, dead.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from samie_node.errors import SpoolError
from samie_node.files import TMP_MARKER, Buffers, remove_temp_files, write_atomically
from samie_node.records import (
    SCHEMA,
    IncomingInstance,
    InstanceRecord,
    OutputRecord,
    OutputState,
    StudyRecord,
    StudyState,
)
from samie_node.uids import require_uid


def _is_out_of_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class OutOfSpaceError(SpoolError):
    """The disk is full or below the configured free-space floor."""


class Spool:
    """Instances on disk plus their SQLite index.

    Parameters
    ----------
    root
        The data directory; ``root/spool`` holds instances, ``root/outbox`` results,
        ``root/index.sqlite3`` the index.
    fsync
        Flush files and folders to stable storage before acknowledging (on in production; tests that only
        exercise logic may turn it off).
    clock
        Wall-clock source, injectable for tests of quiet periods and backoff.
    """

    def __init__(self, root: Path, *, fsync: bool = True, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.instances_dir = self.root / "spool"
        self.outbox_dir = self.root / "outbox"
        self._fsync = fsync
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self.instances_dir.mkdir(parents=True, exist_ok=True)
            self.outbox_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.root / "index.sqlite3", check_same_thread=False, isolation_level=None, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL is enough: the files are the durable truth and reconcile() rebuilds missing rows.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"cannot open the spool at {self.root}: {exc}") from exc

    def close(self) -> None:
        """Close the index."""
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if "full" in str(exc):
                    raise OutOfSpaceError(f"index error: {exc}") from exc
                raise SpoolError(f"index error: {exc}") from exc

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise SpoolError(f"index error: {exc}") from exc

    # ------------------------------------------------------------------ files

    def instance_path(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance lives; every UID is validated again here, at the file-system boundary."""
        study = require_uid(study_instance_uid, "Study Instance UID")
        series = require_uid(series_instance_uid, "Series Instance UID")
        sop = require_uid(sop_instance_uid, "SOP Instance UID")
        return self.instances_dir / study / series / f"{sop}.dcm"

    def write_atomically(self, path: Path, data: Buffers) -> None:
        """Write ``data`` (one buffer or several, concatenated) to ``path`` durably (:mod:`samie_node.files`).

        Raises
        ------
        OutOfSpaceError
            The disk is full (ENOSPC or EDQUOT).
        SpoolError
            Any other I/O error.
        """
        try:
            write_atomically(path, data, fsync=self._fsync)
        except OSError as exc:
            if _is_out_of_space(exc):
                raise OutOfSpaceError("no space left on the spool disk") from exc
            raise SpoolError(f"cannot write {path.name}: {exc.strerror or exc}") from exc

    def free_bytes(self) -> int:
        """Free bytes on the spool's file system, for the disk-space floor."""
        stat = os.statvfs(self.instances_dir)
        return stat.f_bavail * stat.f_frsize

    # -------------------------------------------------------------- instances

    def store(self, incoming: IncomingInstance, data: bytes | memoryview | Sequence[bytes | memoryview]) -> Path:
        """Store one received instance durably and index it; returns its path.

        A duplicate SOP Instance UID replaces the earlier file and row. A study that was ready, done or
        failed goes back to receiving (a late instance re-opens it); one being processed is flagged so the
        worker processes it again when it finishes.
        """
        path = self.instance_path(incoming.study_instance_uid, incoming.series_instance_uid, incoming.sop_instance_uid)
        self.write_atomically(path, data)
        size = len(data) if isinstance(data, bytes | memoryview) else sum(len(part) for part in data)
        try:
            self._index_instance(incoming, path, size)
        except SpoolError:
            # The sender is told the store failed, so the file must not stay behind as if it had been
            # accepted (the index is the other half of the acknowledgement).
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return path

    def _index_instance(self, incoming: IncomingInstance, path: Path, size: int) -> None:
        now = self._clock()
        old_path: str | None = None
        with self._transaction() as db:
            row = db.execute(
                "SELECT path FROM instances WHERE sop_instance_uid = ?", (incoming.sop_instance_uid,)
            ).fetchone()
            if row is not None and row[0] != str(path):
                old_path = row[0]
            db.execute(
                "INSERT INTO instances (sop_instance_uid, study_instance_uid, series_instance_uid,"
                " sop_class_uid, transfer_syntax_uid, path, size, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (sop_instance_uid) DO UPDATE SET study_instance_uid = excluded.study_instance_uid,"
                " series_instance_uid = excluded.series_instance_uid, sop_class_uid = excluded.sop_class_uid,"
                " transfer_syntax_uid = excluded.transfer_syntax_uid, path = excluded.path,"
                " size = excluded.size, received_at = excluded.received_at",
                (
                    incoming.sop_instance_uid,
                    incoming.study_instance_uid,
                    incoming.series_instance_uid,
                    incoming.sop_class_uid,
                    incoming.transfer_syntax_uid,
                    str(path),
                    size,
                    now,
                ),
            )
            db.execute(
                "INSERT INTO studies (study_instance_uid, state, accession_number, study_date,"
                " calling_ae_title, calling_host, first_received, last_received, state_changed)"
                " VALUES (?, 'receiving', ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (study_instance_uid) DO UPDATE SET last_received = excluded.last_received,"
                " accession_number = CASE WHEN excluded.accession_number != '' THEN excluded.accession_number"
                "   ELSE studies.accession_number END,"
                " study_date = CASE WHEN excluded.study_date != '' THEN excluded.study_date"
                "   ELSE studies.study_date END,"
                " calling_ae_title = CASE WHEN excluded.calling_ae_title != '' THEN excluded.calling_ae_title"
                "   ELSE studies.calling_ae_title END,"
                " calling_host = CASE WHEN excluded.calling_host != '' THEN excluded.calling_host"
                "   ELSE studies.calling_host END,"
                " reopened = CASE WHEN studies.state = 'processing' THEN 1 ELSE studies.reopened END,"
                " state = CASE WHEN studies.state = 'processing' THEN 'processing' ELSE 'receiving' END,"
                " state_changed = CASE WHEN studies.state IN ('processing', 'receiving')"
                "   THEN studies.state_changed ELSE excluded.state_changed END",
                (
                    incoming.study_instance_uid,
                    incoming.accession_number,
                    incoming.study_date,
                    incoming.calling_ae_title,
                    incoming.calling_host,
                    now,
                    now,
                    now,
                ),
            )
        if old_path is not None:
            with contextlib.suppress(OSError):
                Path(old_path).unlink()

    def instances(self, study_instance_uid: str) -> list[InstanceRecord]:
        """The instances of a study, in a stable order (series, then SOP Instance UID)."""
        rows = self._query(
            "SELECT sop_instance_uid, study_instance_uid, series_instance_uid, sop_class_uid,"
            " transfer_syntax_uid, path, size FROM instances WHERE study_instance_uid = ?"
            " ORDER BY series_instance_uid, sop_instance_uid",
            (study_instance_uid,),
        )
        return [InstanceRecord(r[0], r[1], r[2], r[3], r[4], Path(r[5]), r[6]) for r in rows]

    # ---------------------------------------------------------------- studies

    def _study_from_row(self, r: tuple[Any, ...]) -> StudyRecord:
        return StudyRecord(
            study_instance_uid=r[0],
            state=r[1],
            instances=r[2],
            accession_number=r[3],
            study_date=r[4],
            calling_ae_title=r[5],
            calling_host=r[6],
            first_received=r[7],
            last_received=r[8],
            attempts=r[9],
            reason=r[10],
            result=json.loads(r[11] or "{}"),
        )

    _STUDY_COLUMNS = (
        "s.study_instance_uid, s.state,"
        " (SELECT COUNT(*) FROM instances i WHERE i.study_instance_uid = s.study_instance_uid),"
        " s.accession_number, s.study_date, s.calling_ae_title, s.calling_host, s.first_received,"
        " s.last_received, s.attempts, s.reason, s.result"
    )

    def studies(self, state: StudyState | None = None) -> list[StudyRecord]:
        """All studies (or those in ``state``), oldest first."""
        where, params = ("WHERE s.state = ?", (state,)) if state else ("", ())
        rows = self._query(f"SELECT {self._STUDY_COLUMNS} FROM studies s {where} ORDER BY s.first_received", params)
        return [self._study_from_row(r) for r in rows]

    def study(self, study_instance_uid: str) -> StudyRecord | None:
        """One study, or None if the index does not know it."""
        rows = self._query(
            f"SELECT {self._STUDY_COLUMNS} FROM studies s WHERE s.study_instance_uid = ?",
            (study_instance_uid,),
        )
        return self._study_from_row(rows[0]) if rows else None

    def studies_page(
        self, *, state: StudyState | None = None, since: float = 0.0, limit: int = 50, offset: int = 0
    ) -> tuple[list[StudyRecord], int]:
        """One page of studies, newest first, in ``state`` (any when None) and first received at or after
        ``since`` (seconds since the epoch); also the number of studies matching."""
        where = "WHERE s.first_received >= ?" + (" AND s.state = ?" if state else "")
        params: tuple[Any, ...] = (since, state) if state else (since,)
        total = int(self._query(f"SELECT COUNT(*) FROM studies s {where}", params)[0][0])
        rows = self._query(
            f"SELECT {self._STUDY_COLUMNS} FROM studies s {where} ORDER BY s.first_received DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [self._study_from_row(r) for r in rows], total

    def counts(self) -> tuple[dict[str, int], dict[str, int], int]:
        """Studies by state, outputs by state, and the bytes of the stored instances (for metrics)."""
        studies = dict(self._query("SELECT state, COUNT(*) FROM studies GROUP BY state"))
        outputs = dict(self._query("SELECT state, COUNT(*) FROM outputs GROUP BY state"))
        stored = int(self._query("SELECT COALESCE(SUM(size), 0) FROM instances")[0][0])
        return studies, outputs, stored

    def outbox_by_destination(self) -> dict[str, tuple[dict[str, int], float | None, str]]:
        """Per destination: outputs by state, when the last one was delivered, and the latest error."""
        found: dict[str, tuple[dict[str, int], float | None, str]] = {}
        for destination, state, count, sent_at in self._query(
            "SELECT destination, state, COUNT(*), MAX(sent_at) FROM outputs GROUP BY destination, state"
        ):
            counts, last_sent, _ = found.get(destination, ({}, None, ""))
            counts[state] = count
            found[destination] = (counts, max(last_sent or 0.0, sent_at or 0.0) or None, "")
        for destination, error in self._query(
            "SELECT destination, last_error FROM outputs WHERE id IN"
            " (SELECT MAX(id) FROM outputs WHERE last_error != '' GROUP BY destination)"
        ):
            counts, last_sent, _ = found[destination]
            found[destination] = (counts, last_sent, error)
        return found

    def check_writable(self) -> None:
        """Write to the index (one row of its own), for readiness checks.

        Raises
        ------
        SpoolError
            If the index cannot be written (read-only, full, locked for longer than the timeout).
        """
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO health (id, checked_at) VALUES (1, ?)", (self._clock(),))

    def mark_quiet_studies_ready(self, quiet_period_s: float) -> list[str]:
        """Move studies with no new instance for ``quiet_period_s`` from receiving to ready."""
        now = self._clock()
        with self._transaction() as db:
            rows = db.execute(
                "SELECT study_instance_uid FROM studies WHERE state = 'receiving' AND last_received <= ?",
                (now - quiet_period_s,),
            ).fetchall()
            uids = [r[0] for r in rows]
            db.executemany(
                "UPDATE studies SET state = 'ready', state_changed = ? WHERE study_instance_uid = ?",
                [(now, uid) for uid in uids],
            )
        return uids

    def claim_ready_study(self) -> str | None:
        """Take the oldest ready study for processing (ready -> processing), or None."""
        now = self._clock()
        with self._transaction() as db:
            row = db.execute(
                "SELECT study_instance_uid FROM studies WHERE state = 'ready' ORDER BY last_received LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE studies SET state = 'processing', state_changed = ?, reopened = 0,"
                " attempts = attempts + 1 WHERE study_instance_uid = ?",
                (now, row[0]),
            )
            return str(row[0])

    def finish_study(
        self, study_instance_uid: str, state: Literal["done", "failed"], reason: str, result: dict[str, Any]
    ) -> StudyState:
        """Record the end of processing; a study re-opened meanwhile goes back to receiving.

        Returns the state the study is left in.
        """
        now = self._clock()
        with self._transaction() as db:
            row = db.execute(
                "SELECT reopened FROM studies WHERE study_instance_uid = ?", (study_instance_uid,)
            ).fetchone()
            final: StudyState = "receiving" if row and row[0] else state
            db.execute(
                "UPDATE studies SET state = ?, reason = ?, result = ?, reopened = 0, state_changed = ?"
                " WHERE study_instance_uid = ?",
                (final, reason, json.dumps(result, sort_keys=True), now, study_instance_uid),
            )
        return final

    def requeue_study(self, study_instance_uid: str) -> bool:
        """Put a study back to ready (re-processing); False if the index does not know it."""
        now = self._clock()
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE studies SET state = 'ready', state_changed = ?, reason = '' WHERE study_instance_uid = ?",
                (now, study_instance_uid),
            )
            return cursor.rowcount > 0

    # ---------------------------------------------------------------- outputs

    def add_output(
        self,
        study_instance_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        path: Path,
        destination: str,
    ) -> None:
        """Queue one result for one destination; re-adding the same UID replaces and re-queues it."""
        now = self._clock()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO outputs (study_instance_uid, sop_class_uid, sop_instance_uid, path, destination,"
                " state, attempts, next_attempt_at, last_error, created_at)"
                " VALUES (?, ?, ?, ?, ?, 'pending', 0, 0, '', ?)"
                " ON CONFLICT (sop_instance_uid, destination) DO UPDATE SET path = excluded.path,"
                " sop_class_uid = excluded.sop_class_uid, state = 'pending', attempts = 0,"
                " next_attempt_at = 0, last_error = '', sent_at = NULL",
                (study_instance_uid, sop_class_uid, sop_instance_uid, str(path), destination, now),
            )

    _OUTPUT_COLUMNS = (
        "id, study_instance_uid, sop_class_uid, sop_instance_uid, path, destination, state, attempts,"
        " next_attempt_at, last_error"
    )

    @staticmethod
    def _output_from_row(r: tuple[Any, ...]) -> OutputRecord:
        return OutputRecord(r[0], r[1], r[2], r[3], Path(r[4]), r[5], r[6], r[7], r[8], r[9])

    def still_due(self, outputs: Sequence[OutputRecord]) -> list[OutputRecord]:
        """Those of ``outputs`` still pending or retrying, as the index holds them now (two senders in one
        process, the node's loop and a resend from the console, must not deliver the same output twice)."""
        if not outputs:
            return []
        marks = ",".join("?" * len(outputs))
        rows = self._query(
            f"SELECT {self._OUTPUT_COLUMNS} FROM outputs WHERE id IN ({marks}) AND state IN ('pending', 'retrying')"
            " ORDER BY id",
            tuple(o.id for o in outputs),
        )
        return [self._output_from_row(r) for r in rows]

    def due_outputs(self, limit: int = 100) -> list[OutputRecord]:
        """Outputs pending or retrying whose next attempt time has come, oldest first."""
        rows = self._query(
            f"SELECT {self._OUTPUT_COLUMNS} FROM outputs WHERE state IN ('pending', 'retrying')"
            " AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
            (self._clock(), limit),
        )
        return [self._output_from_row(r) for r in rows]

    def outputs(self, study_instance_uid: str | None = None) -> list[OutputRecord]:
        """All outputs, or those of one study."""
        where, params = ("WHERE study_instance_uid = ?", (study_instance_uid,)) if study_instance_uid else ("", ())
        rows = self._query(f"SELECT {self._OUTPUT_COLUMNS} FROM outputs {where} ORDER BY id", params)
        return [self._output_from_row(r) for r in rows]

    def select_outputs(
        self,
        *,
        study_instance_uids: Sequence[str] = (),
        accession_numbers: Sequence[str] = (),
        since: str | None = None,
        states: Sequence[OutputState] = (),
    ) -> list[OutputRecord]:
        """Outputs matching every given filter (an empty filter matches all): study UIDs, accession numbers,
        study date on or after ``since`` (YYYYMMDD), output states."""
        clauses: list[str] = []
        params: list[Any] = []
        if study_instance_uids:
            clauses.append(f"o.study_instance_uid IN ({','.join('?' * len(study_instance_uids))})")
            params.extend(study_instance_uids)
        if accession_numbers:
            clauses.append(f"s.accession_number IN ({','.join('?' * len(accession_numbers))})")
            params.extend(accession_numbers)
        if since:
            clauses.append("s.study_date >= ?")
            params.append(since)
        if states:
            clauses.append(f"o.state IN ({','.join('?' * len(states))})")
            params.extend(states)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        columns = ", ".join(f"o.{c.strip()}" for c in self._OUTPUT_COLUMNS.split(","))
        rows = self._query(
            f"SELECT {columns} FROM outputs o LEFT JOIN studies s ON s.study_instance_uid = o.study_instance_uid"
            f" {where} ORDER BY o.id",
            tuple(params),
        )
        return [self._output_from_row(r) for r in rows]

    def mark_output_sent(self, output_id: int) -> None:
        """Record a delivery that the peer acknowledged with Success (or a warning)."""
        now = self._clock()
        with self._transaction() as db:
            db.execute(
                "UPDATE outputs SET state = 'sent', attempts = attempts + 1, sent_at = ?, last_error = '' WHERE id = ?",
                (now, output_id),
            )

    def mark_output_failed(self, output_id: int, reason: str, *, retry_at: float | None) -> OutputState:
        """Record a failed attempt: retrying until ``retry_at``, or dead when ``retry_at`` is None."""
        state: OutputState = "retrying" if retry_at is not None else "dead"
        with self._transaction() as db:
            db.execute(
                "UPDATE outputs SET state = ?, attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                " WHERE id = ?",
                (state, retry_at or 0.0, reason[:500], output_id),
            )
        return state

    def requeue_outputs(self, output_ids: list[int], destination: str | None = None) -> int:
        """Put outputs back to pending (optionally to another destination); returns how many."""
        count = 0
        with self._transaction() as db:
            for output_id in output_ids:
                if destination is None:
                    cursor = db.execute(
                        "UPDATE outputs SET state = 'pending', attempts = 0, next_attempt_at = 0 WHERE id = ?",
                        (output_id,),
                    )
                else:
                    cursor = db.execute(
                        "INSERT INTO outputs (study_instance_uid, sop_class_uid, sop_instance_uid, path,"
                        " destination, state, attempts, next_attempt_at, last_error, created_at)"
                        " SELECT study_instance_uid, sop_class_uid, sop_instance_uid, path, ?, 'pending', 0, 0,"
                        " '', ? FROM outputs WHERE id = ?"
                        " ON CONFLICT (sop_instance_uid, destination) DO UPDATE SET state = 'pending',"
                        " attempts = 0, next_attempt_at = 0, sent_at = NULL",
                        (destination, self._clock(), output_id),
                    )
                count += cursor.rowcount
        return count

    # ------------------------------------------------------------- start-up

    def reconcile(self, read_uids: Callable[[Path], IncomingInstance | None]) -> dict[str, int]:
        """Make the index agree with the disk after a restart or crash.

        - temporary files (a write interrupted before its rename) are removed;
        - files the index does not know are indexed through ``read_uids`` (which reads the UIDs from the
          file header, or returns None for a file that is not usable, which is then removed);
        - rows whose file is gone are dropped;
        - studies left in processing go back to ready; outputs left in between stay queued.

        Returns counts of what it did, for the start-up log line.
        """
        counts = {"temp_removed": 0, "indexed": 0, "rows_dropped": 0, "requeued": 0, "unusable_removed": 0}
        known = {Path(r[0]) for r in self._query("SELECT path FROM instances")}
        on_disk: set[Path] = set()
        for dirpath, _dirnames, filenames in os.walk(self.instances_dir):
            for filename in filenames:
                path = Path(dirpath) / filename
                if TMP_MARKER in filename:
                    with contextlib.suppress(OSError):
                        path.unlink()
                        counts["temp_removed"] += 1
                    continue
                on_disk.add(path)
                if path in known:
                    continue
                incoming = read_uids(path)
                if incoming is None:
                    with contextlib.suppress(OSError):
                        path.unlink()
                        counts["unusable_removed"] += 1
                    continue
                self._index_instance(incoming, path, path.stat().st_size)
                counts["indexed"] += 1
        counts["temp_removed"] += remove_temp_files(self.outbox_dir)
        missing = known - on_disk
        now = self._clock()
        with self._transaction() as db:
            db.executemany("DELETE FROM instances WHERE path = ?", [(str(p),) for p in missing])
            counts["rows_dropped"] = len(missing)
            cursor = db.execute(
                "UPDATE studies SET state = 'ready', state_changed = ? WHERE state = 'processing'", (now,)
            )
            counts["requeued"] = cursor.rowcount
        return counts


__all__ = [
    "IncomingInstance",
    "InstanceRecord",
    "OutOfSpaceError",
    "OutputRecord",
    "OutputState",
    "Spool",
    "StudyRecord",
    "StudyState",
]
