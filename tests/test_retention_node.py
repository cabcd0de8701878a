"""Retention as the administrator meets it: ``samie-node purge`` on a data directory, the cleaner of a
real ``samie-node serve`` on a small file system fed by dcmtk's storescu, and kill -9 in the middle of a
purge."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from peers import NodeProcess, node_config, require_tool, tmpfs, write_config
from retention_fixtures import (
    Clock,
    SeededStudy,
    assert_index_agrees_with_disk,
    audit_events,
    files_under,
    seed_study,
    wait_until,
)
from web_support import http, running_web_node, scrape, value

from samie_node.audit import AuditLog
from samie_node.config import Settings
from samie_node.retention import run_purge
from samie_node.spool import Spool
from samie_node.testing.ports import free_port
from samie_node.testing.sample_studies import ct_series, write_datasets

HOUR = 3600.0


def samie_node(*args: str) -> subprocess.CompletedProcess[str]:
    """A ``samie-node`` command, its tables printed wide enough not to wrap."""
    command = [sys.executable, "-m", "samie_node", *args]
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def purge_json(config: Path, *args: str) -> dict[str, Any]:
    done = samie_node("purge", "--config", str(config), "--json", *args)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_purge_dry_run_lists_exactly_what_the_real_run_then_removes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    clock = Clock(time.time() - 30 * HOUR)
    spool = Spool(data, fsync=False, clock=clock)
    old_done = [seed_study(spool, clock, seed=seed) for seed in (101, 102)]
    failed = seed_study(spool, clock, seed=103, outcome="failed")
    undelivered = seed_study(spool, clock, seed=104, outputs=("pending",))
    clock.now = time.time() - 0.5 * HOUR
    recent = seed_study(spool, clock, seed=106)
    receiving = seed_study(spool, clock, seed=105, outcome="receiving")  # last: seeding readies the others
    spool.close()
    config = write_config(
        tmp_path / "samie-node.toml",
        {"node": {"data_dir": str(data)}, "retention": {"keep_delivered": "12h", "keep_outbox": "1d"}},
    )

    before = {p: p.stat().st_mtime_ns for p in files_under(data / "spool") | files_under(data / "outbox")}
    dry = purge_json(config, "--dry-run")
    assert {p: p.stat().st_mtime_ns for p in files_under(data / "spool") | files_under(data / "outbox")} == before
    assert dry["removed"] == [] and audit_events(data, "study_purged") == []
    planned = [(d["study_instance_uid"], d["instances"], d["results"], d["files"], d["bytes"]) for d in dry["planned"]]
    assert [p[0] for p in planned] == [s.study_instance_uid for s in old_done]
    kept = {d["study_instance_uid"]: d["kept"] for d in dry["kept"]}
    assert kept[failed.study_instance_uid].startswith("failed: kept")
    assert kept[undelivered.study_instance_uid] == "1 result(s) not delivered yet (pending or retrying)"
    assert kept[receiving.study_instance_uid] == "receiving: in flight"
    assert kept[recent.study_instance_uid].startswith("delivered: kept")

    real = purge_json(config)
    removed = [(o["study_instance_uid"], o["instances"], o["results"], o["files"], o["bytes"]) for o in real["removed"]]
    assert removed == planned
    assert real["bytes_freed"] == dry["bytes_freed"] == sum(p[4] for p in planned) > 0
    gone = set(before) - (files_under(data / "spool") | files_under(data / "outbox"))
    assert gone == {p for s in old_done for p in s.instance_paths + s.output_paths}
    assert_index_agrees_with_disk(data)

    # status still accounts for the purged studies: when, and how much that freed.
    status = json.loads(samie_node("status", "--config", str(config), "--json").stdout)
    by_uid = {s["study_instance_uid"]: s for s in status}
    for study, outcome in zip(old_done, real["removed"], strict=True):
        row = by_uid[study.study_instance_uid]
        assert row["state"] == "purged" and row["bytes_freed"] == outcome["bytes"] and row["purged_at"] > 0
        assert all(o["state"] == "sent" and o["purged"] for o in row["outputs"])
    table = samie_node("status", "--config", str(config)).stdout
    assert "purged" in table and "MB freed" in table

    # The operator: one study, whatever its age; what is undelivered stays, and the command says why.
    shown = samie_node("purge", "--config", str(config), "--study", failed.study_instance_uid, "--older-than", "0s")
    assert shown.returncode == 0 and "1 study purged (operator)" in shown.stdout and "freed" in shown.stdout
    refused = purge_json(config, "--study", undelivered.study_instance_uid, "--older-than", "0s")
    assert refused["removed"] == [] and "not delivered" in refused["kept"][0]["kept"]
    assert all(p.exists() for p in undelivered.instance_paths + undelivered.output_paths)
    reasons = [(r["study_instance_uid"], r["reason"]) for r in audit_events(data, "study_purged")]
    assert reasons == [(s.study_instance_uid, "policy") for s in old_done] + [(failed.study_instance_uid, "operator")]
    bad = samie_node("purge", "--config", str(config), "--older-than", "3 days")
    assert bad.returncode == 2 and "--older-than" in bad.stderr


def free_bytes(folder: Path) -> int:
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize


def _storescu(port: int, files: list[Path]) -> subprocess.CompletedProcess[bytes]:
    command = [require_tool("storescu"), "-aec", "SAMIE_NODE", "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(command, capture_output=True, timeout=120)


def test_emergency_on_a_small_file_system_keeps_the_node_accepting(tmp_path: Path) -> None:
    mib = 1024 * 1024
    with tmpfs(tmp_path / "small", "64m") as data:
        floor, emergency = 8 * mib, 24 * mib
        clock = Clock(time.time() - HOUR)
        spool = Spool(data, clock=clock)
        undelivered = seed_study(spool, clock, seed=201, outputs=("retrying",), slices=4, size=512)
        failed = seed_study(spool, clock, seed=202, outcome="failed", slices=4, size=512)
        done: list[SeededStudy] = []
        while spool.free_bytes() > emergency + 3 * mib:  # filled close to the threshold
            clock.now += 60
            done.append(seed_study(spool, clock, seed=210 + len(done), slices=4, size=512))
        spool.close()
        # New studies worth more than the room above the floor: without retention the node would refuse them.
        incoming = [ct_series(4, 512, 512, seed=300 + i)[0] for i in range((emergency - floor) // (2 * mib) + 3)]
        port = free_port()
        config = node_config(
            tmp_path,
            port,
            node={"data_dir": str(data)},
            limits={"disk_floor_bytes": floor},
            study={"quiet_period_s": 3600.0},
            send={"max_attempts": 1000},
            retention={"emergency_margin_bytes": emergency - floor, "batch_pause_s": 0.0},
        )
        node = NodeProcess(data, port, config, tmp_path / "node.log").start()
        try:
            for index, datasets in enumerate(incoming):
                sent = _storescu(port, write_datasets(datasets, tmp_path / f"new{index}"))
                assert sent.returncode == 0, sent.stderr.decode()
            status = {s["study_instance_uid"]: s for s in node.status()}
            for datasets in incoming:  # every instance accepted and indexed
                assert status[str(datasets[0].StudyInstanceUID)]["instances"] == len(datasets)
            wait_until(lambda: free_bytes(data) >= emergency, "the cleaner to catch up")
        finally:
            assert node.stop() == 0, node.log()[-3000:]
        purged = [r["study_instance_uid"] for r in audit_events(data, "study_purged")]
        assert all(r["reason"] == "emergency" for r in audit_events(data, "study_purged"))
        assert 0 < len(purged) < len(done)
        assert purged == [s.study_instance_uid for s in done[: len(purged)]]  # the oldest done studies first
        for kept in (undelivered, failed, *done[len(purged) :]):
            assert all(p.exists() for p in kept.instance_paths + kept.output_paths)
        assert "association rejected" not in node.log() and audit_events(data, "instance_refused") == []
        assert_index_agrees_with_disk(data)


def _purge_progress(index: Path, study_instance_uid: str) -> tuple[bool, int]:
    """Whether a purge of the study is recorded as in progress, and how many of its instance rows remain."""
    db = sqlite3.connect(index, timeout=30)
    try:
        running = db.execute("SELECT COUNT(*) FROM purges WHERE study_instance_uid = ?", (study_instance_uid,))
        remaining = db.execute("SELECT COUNT(*) FROM instances WHERE study_instance_uid = ?", (study_instance_uid,))
        return bool(running.fetchone()[0]), int(remaining.fetchone()[0])
    finally:
        db.close()


def test_kill_9_in_the_middle_of_a_purge_then_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    clock = Clock(time.time() - 2 * HOUR)
    spool = Spool(data, clock=clock)
    undelivered = seed_study(spool, clock, seed=401, outputs=("sent", "retrying"))
    failed = seed_study(spool, clock, seed=402, outcome="failed")
    big = seed_study(spool, clock, seed=403, slices=60, size=32)
    spool.close()
    uid = big.study_instance_uid
    big_bytes = big.instance_bytes + sum(p.stat().st_size for p in big.output_paths)
    port = free_port()
    # Small batches with a pause between them: the purge of the big study takes seconds, long enough to
    # see it under way (its intent recorded, some files gone) and to kill the node there.
    config = node_config(
        tmp_path,
        port,
        send={"max_attempts": 1000},
        retention={"keep_delivered": "1m", "keep_outbox": "1m", "files_per_batch": 4, "batch_pause_s": 0.3},
    )
    node = NodeProcess(data, port, config, tmp_path / "node.log").start()
    try:

        def under_way() -> bool:
            running, remaining = _purge_progress(data / "index.sqlite3", uid)
            return running and remaining <= 52

        wait_until(under_way, "the purge to be under way")
        node.kill9()
    finally:
        node.stop()
    running, remaining = _purge_progress(data / "index.sqlite3", uid)
    on_disk = len(files_under(data / "spool" / uid))
    assert running and 0 < remaining < 60 and 0 < on_disk < 60, "the node must die in the middle of the purge"

    node = NodeProcess(data, port, config, tmp_path / "node2.log").start()  # start-up finishes the purge
    assert node.stop() == 0, node.log()[-3000:]
    assert "finishing an interrupted purge" in node.log()
    assert_index_agrees_with_disk(data)
    status = {s["study_instance_uid"]: s for s in node.status()}
    assert (status[uid]["state"], status[uid]["bytes_freed"]) == ("purged", big_bytes)
    [record] = [r for r in audit_events(data, "study_purged") if r["study_instance_uid"] == uid]
    assert (record["bytes"], record["instance_files"], record["files"]) == (big_bytes, 60, 60 + len(big.output_paths))
    assert not files_under(data / "spool" / uid) and not (data / "outbox" / uid).exists()
    for kept in (undelivered, failed):  # nothing undelivered (nor failed and recent) was touched
        assert all(p.exists() for p in kept.instance_paths + kept.output_paths)
        assert status[kept.study_instance_uid]["state"] in ("done", "failed")


def test_the_console_and_metrics_account_for_purged_studies(tmp_path: Path) -> None:
    data = tmp_path / "data"
    clock = Clock(time.time() - 30 * HOUR)
    spool = Spool(data, fsync=False, clock=clock)
    purged = seed_study(spool, clock, seed=501, outputs=("sent", "sent"))
    kept = seed_study(spool, clock, seed=502, outcome="failed")
    audit = AuditLog(data / "audit.jsonl")
    report = run_purge(spool, audit, Settings().retention, study_instance_uids=[purged.study_instance_uid])
    assert [o.study_instance_uid for o in report.removed] == [purged.study_instance_uid]
    spool.close()
    with running_web_node(tmp_path) as web:
        study_page = http("GET", f"{web.url}/studies/{purged.study_instance_uid}").text
        listed = http("GET", f"{web.url}/studies?state=purged").text
        overview = http("GET", f"{web.url}/").text
        samples = scrape(web.url)
    freed = f"{report.removed[0].bytes / 1e6:.1f} MB freed"
    assert 'id="study-state">purged<' in study_page and "instances removed by retention" in study_page
    assert freed in study_page and study_page.count("file removed by retention") == 2
    assert purged.study_instance_uid in listed and kept.study_instance_uid not in listed
    assert 'href="/studies?state=purged"' in overview
    assert value(samples, "samie_studies", state="purged") == 1
    assert value(samples, "samie_studies", state="failed") == 1
