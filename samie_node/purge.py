"""Removing a study's files so that a crash never leaves it half removed, and the leases that keep
retention away from studies in use.

A purge of one study goes in steps, each a transaction of the index (``BEGIN IMMEDIATE`` excludes every
other writer, in this process or another):

1. **begin**: the study is checked again (not receiving, ready or processing; no result pending or
   retrying; no live lease; no other purge of it in progress). A row in ``purges`` records the intent and
   what goes (instances, results or both); the rows to remove are flagged (``purging = 1``). With its
   instances the study becomes ``purged`` at once, so nothing processes it, and its flagged instances no
   longer count as part of it.
2. **results**: the study's outbox folder (SEG, SR, overlays, previews) is emptied in one transaction and
   its outputs marked purged.
3. **instances**: batches of flagged rows: each file unlinked and its row deleted in the same transaction,
   the folders fsynced before the commit.
4. **finish**: empty folders go, the bytes freed are added to the study, the purge is audited and its
   ``purges`` row deleted.

kill -9 at any point leaves the ``purges`` row; :func:`finish_interrupted` (at start-up, before the spool
is reconciled, and before every cleaner pass) resumes from step 2, so the index and the disk agree again.
A late instance for the study meanwhile is safe: its store clears its own row's flag, or finds its file
taken and writes it again (:meth:`samie_node.spool.Spool.store`), and the study re-opens with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samie_node.audit import AuditLog
from samie_node.errors import SpoolError
from samie_node.files import fsync_folder
from samie_node.records import PurgeReason, StudyState
from samie_node.spool import Spool

LOG = logging.getLogger("samie_node.purge")

#: How long a lease lasts if its holder dies without releasing it and its process ID is reused.
LEASE_TTL_S = 24 * 3600.0


@dataclass(frozen=True)
class PurgeOutcome:
    """What one purge removed."""

    study_instance_uid: str
    reason: PurgeReason
    instances: bool
    results: bool
    instance_files: int  # received instances removed
    files: int  # all files removed (instances, results, previews)
    bytes: int


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_LEASES = "SELECT study_instance_uid, holder, pid, expires_at FROM leases"


def _live(rows: Sequence[tuple[str, str, int, float]], now: float) -> dict[str, str]:
    return {uid: f"{holder} pid {pid}" for uid, holder, pid, expires in rows if expires > now and _pid_alive(pid)}


def live_leases(spool: Spool, now: float) -> dict[str, str]:
    """Study UID -> who holds it (``resend pid 123``), for leases whose holder still runs."""
    return _live(spool.query(_LEASES), now)


@contextlib.contextmanager
def lease(
    spool: Spool, study_instance_uids: Sequence[str], holder: str, *, clock: Callable[[], float] = time.time
) -> Iterator[None]:
    """Keep retention away from these studies while the block runs (``resend``, ``retrieve``).

    The lease names this process; one whose process is gone no longer counts, so a crashed holder does not
    keep a study for ever.
    """
    pid = os.getpid()
    uids = sorted(set(study_instance_uids))
    with spool.transaction() as db:
        db.executemany(
            "INSERT OR REPLACE INTO leases (study_instance_uid, holder, pid, expires_at) VALUES (?, ?, ?, ?)",
            [(uid, holder, pid, clock() + LEASE_TTL_S) for uid in uids],
        )
    try:
        yield
    finally:
        with spool.transaction() as db:
            db.executemany(
                "DELETE FROM leases WHERE study_instance_uid = ? AND holder = ? AND pid = ?",
                [(uid, holder, pid) for uid in uids],
            )


@dataclass(frozen=True)
class StudyFacts:
    """What retention needs to know about one study, read in one query."""

    study_instance_uid: str
    state: StudyState
    settled_at: float  # processed, or its last result delivered, whichever is later
    undelivered: int  # results pending or retrying
    dead: int  # dead letters
    purging: bool  # a purge of it is in progress
    results_left: bool  # its results and previews have not been removed
    instances: int
    instance_bytes: int

    def protection(self, holder: str = "") -> str:
        """Why the study may not be purged now ('' if it may); ``holder`` names a live lease on it."""
        if self.state in ("receiving", "ready", "processing"):
            return f"{self.state}: in flight"
        if self.undelivered:
            return f"{self.undelivered} result(s) not delivered yet (pending or retrying)"
        if holder:
            return f"in use by {holder}"
        return "purge in progress" if self.purging else ""


_FACTS = (
    "SELECT s.study_instance_uid, s.state,"
    " MAX(s.state_changed, COALESCE((SELECT MAX(o.sent_at) FROM outputs o"
    "   WHERE o.study_instance_uid = s.study_instance_uid), 0)),"
    " (SELECT COUNT(*) FROM outputs o WHERE o.study_instance_uid = s.study_instance_uid"
    "   AND o.state IN ('pending', 'retrying')),"
    " (SELECT COUNT(*) FROM outputs o WHERE o.study_instance_uid = s.study_instance_uid AND o.state = 'dead'),"
    " EXISTS (SELECT 1 FROM purges p WHERE p.study_instance_uid = s.study_instance_uid),"
    " s.results_purged_at IS NULL,"
    " (SELECT COUNT(*) FROM instances i WHERE i.study_instance_uid = s.study_instance_uid AND i.purging = 0),"
    " (SELECT COALESCE(SUM(i.size), 0) FROM instances i"
    "   WHERE i.study_instance_uid = s.study_instance_uid AND i.purging = 0)"
    " FROM studies s"
)


def _facts(row: tuple[Any, ...]) -> StudyFacts:
    return StudyFacts(row[0], row[1], row[2], row[3], row[4], bool(row[5]), bool(row[6]), row[7], row[8])


def study_facts(spool: Spool, study_instance_uids: Sequence[str] = ()) -> list[StudyFacts]:
    """Facts about every study with something left to remove (or about the given ones), oldest settled first."""
    if study_instance_uids:
        where = f" WHERE s.study_instance_uid IN ({','.join('?' * len(study_instance_uids))})"
    else:
        where = " WHERE NOT (s.state = 'purged' AND s.results_purged_at IS NOT NULL)"
    rows = spool.query(f"{_FACTS}{where} ORDER BY 3", tuple(study_instance_uids))
    return [_facts(row) for row in rows]


def begin(
    spool: Spool,
    study_instance_uid: str,
    reason: PurgeReason,
    *,
    instances: bool,
    results: bool,
    clock: Callable[[], float] = time.time,
) -> str:
    """Record the intent to purge and flag what goes; returns '' when begun, else why not (see
    :func:`protection`)."""
    now = clock()
    with spool.transaction() as db:
        row = db.execute(f"{_FACTS} WHERE s.study_instance_uid = ?", (study_instance_uid,)).fetchone()
        if row is None:
            return "not in the index"
        facts = _facts(row)
        why = facts.protection(_live(db.execute(_LEASES).fetchall(), now).get(study_instance_uid, ""))
        if why:
            return why
        instances = instances and facts.state != "purged"
        db.execute(
            "INSERT INTO purges (study_instance_uid, reason, instances, results, started_at) VALUES (?, ?, ?, ?, ?)",
            (study_instance_uid, reason, int(instances), int(results), now),
        )
        if instances:
            db.execute("UPDATE instances SET purging = 1 WHERE study_instance_uid = ?", (study_instance_uid,))
            db.execute(
                "UPDATE studies SET state = 'purged', purged_at = ? WHERE study_instance_uid = ?",
                (now, study_instance_uid),
            )
        if results:
            db.execute(
                "UPDATE outputs SET purging = 1 WHERE study_instance_uid = ? AND purged_at IS NULL",
                (study_instance_uid,),
            )
    return ""


def _unlink(path: Path) -> int:
    """Remove one file; its size, or 0 if it was already gone."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


def _remove_results(spool: Spool, study_instance_uid: str, clock: Callable[[], float]) -> None:
    folder = spool.outbox_dir / study_instance_uid
    with spool.transaction() as db:
        state = db.execute("SELECT state FROM studies WHERE study_instance_uid = ?", (study_instance_uid,)).fetchone()
        if state is None or state[0] in ("receiving", "ready", "processing"):
            # Re-opened since the purge began: its next results will be written here; keep the folder.
            db.execute("UPDATE outputs SET purging = 0 WHERE study_instance_uid = ?", (study_instance_uid,))
            db.execute("UPDATE purges SET results = 0 WHERE study_instance_uid = ?", (study_instance_uid,))
            return
        files = freed = 0
        for dirpath, _dirnames, filenames in os.walk(folder, topdown=False):
            for filename in filenames:
                freed += _unlink(Path(dirpath) / filename)
                files += 1
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
        if spool.fsync and files:
            fsync_folder(spool.outbox_dir)
        now = clock()
        db.execute(
            "UPDATE outputs SET purging = 0, purged_at = ? WHERE study_instance_uid = ? AND purging = 1",
            (now, study_instance_uid),
        )
        db.execute("UPDATE studies SET results_purged_at = ? WHERE study_instance_uid = ?", (now, study_instance_uid))
        db.execute(
            "UPDATE purges SET files = files + ?, bytes = bytes + ? WHERE study_instance_uid = ?",
            (files, freed, study_instance_uid),
        )


def _remove_instance_batch(spool: Spool, study_instance_uid: str, limit: int) -> int:
    """Unlink up to ``limit`` flagged instances and delete their rows in one transaction; returns how many."""
    failure: OSError | None = None
    with spool.transaction() as db:
        rows = db.execute(
            "SELECT sop_instance_uid, path, size FROM instances WHERE study_instance_uid = ? AND purging = 1 LIMIT ?",
            (study_instance_uid, limit),
        ).fetchall()
        removed: list[tuple[str]] = []
        freed = 0
        folders: set[Path] = set()
        for sop_instance_uid, path, size in rows:
            try:
                Path(path).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:  # commit what went, then say what did not
                failure = exc
                break
            removed.append((sop_instance_uid,))
            freed += size
            folders.add(Path(path).parent)
        if spool.fsync:
            for folder in folders:
                with contextlib.suppress(FileNotFoundError):
                    fsync_folder(folder)
        db.executemany("DELETE FROM instances WHERE sop_instance_uid = ? AND purging = 1", removed)
        db.execute(
            "UPDATE purges SET instance_files = instance_files + ?, files = files + ?, bytes = bytes + ?"
            " WHERE study_instance_uid = ?",
            (len(removed), len(removed), freed, study_instance_uid),
        )
    if failure is not None:
        raise SpoolError(f"cannot remove a file of study {study_instance_uid}: {failure.strerror or failure}")
    return len(rows)


def _remove_empty_folders(root: Path) -> None:
    """Remove the folders under ``root`` that are empty (a late instance's folder stays)."""
    for dirpath, _dirnames, _filenames in os.walk(root, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def _finish(spool: Spool, study_instance_uid: str, audit: AuditLog) -> PurgeOutcome | None:
    with spool.transaction() as db:
        row = db.execute(
            "SELECT reason, instances, results, instance_files, files, bytes FROM purges WHERE study_instance_uid = ?",
            (study_instance_uid,),
        ).fetchone()
        if row is None:
            return None  # another process finished it
        outcome = PurgeOutcome(study_instance_uid, row[0], bool(row[1]), bool(row[2]), row[3], row[4], row[5])
        db.execute(
            "UPDATE studies SET bytes_freed = bytes_freed + ? WHERE study_instance_uid = ?",
            (outcome.bytes, study_instance_uid),
        )
        db.execute("DELETE FROM purges WHERE study_instance_uid = ?", (study_instance_uid,))
        # Recorded before the commit: after a crash here the purge is finished (and recorded) again, so the
        # trail may repeat a purge but never misses one.
        audit.record(
            "study_purged",
            study_instance_uid=study_instance_uid,
            reason=outcome.reason,
            instances=outcome.instances,
            results=outcome.results,
            instance_files=outcome.instance_files,
            files=outcome.files,
            bytes=outcome.bytes,
        )
    LOG.info(
        "study purged study_instance_uid=%s reason=%s files=%d bytes=%d",
        study_instance_uid,
        outcome.reason,
        outcome.files,
        outcome.bytes,
    )
    return outcome


def resume(
    spool: Spool,
    study_instance_uid: str,
    audit: AuditLog,
    *,
    files_per_batch: int,
    batch_pause_s: float = 0.0,
    clock: Callable[[], float] = time.time,
) -> PurgeOutcome | None:
    """Carry a begun purge to its end (steps 2 to 4); None if it was not in progress."""
    row = spool.query(
        "SELECT instances, results FROM purges WHERE study_instance_uid = ?",
        (study_instance_uid,),
    )
    if not row:
        return None
    instances, results = row[0]
    if results:
        _remove_results(spool, study_instance_uid, clock)
    if instances:
        while _remove_instance_batch(spool, study_instance_uid, files_per_batch) == files_per_batch:
            time.sleep(batch_pause_s)
        _remove_empty_folders(spool.instances_dir / study_instance_uid)
    return _finish(spool, study_instance_uid, audit)


def finish_interrupted(
    spool: Spool, audit: AuditLog, *, files_per_batch: int = 1000, clock: Callable[[], float] = time.time
) -> list[PurgeOutcome]:
    """Finish every purge a crash (or kill -9) interrupted, and forget leases whose holder is gone."""
    outcomes = []
    for (study_instance_uid,) in spool.query("SELECT study_instance_uid FROM purges ORDER BY started_at"):
        LOG.warning("finishing an interrupted purge study_instance_uid=%s", study_instance_uid)
        outcome = resume(spool, study_instance_uid, audit, files_per_batch=files_per_batch, clock=clock)
        if outcome is not None:
            outcomes.append(outcome)
    now = clock()
    stale = [
        (uid, holder, pid)
        for uid, holder, pid, expires in spool.query(_LEASES)
        if expires <= now or not _pid_alive(pid)
    ]
    if stale:
        with spool.transaction() as db:
            db.executemany("DELETE FROM leases WHERE study_instance_uid = ? AND holder = ? AND pid = ?", stale)
    return outcomes
