"""Delivery: C-STORE SCU with status checks, backoff, dead letters, against a real SCP on loopback."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from peers import free_port
from pydicom.data import get_testdata_file

from samie_node.audit import AuditLog
from samie_node.config import Peer, load_settings
from samie_node.errors import DeliveryError
from samie_node.net.send import Sender, echo
from samie_node.spool import Spool
from samie_node.testing.pacs import StoreSCP

CT = Path(str(get_testdata_file("CT_small.dcm")))
MR = Path(str(get_testdata_file("MR_small.dcm")))
STUDY = "1.2.3"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def queue(spool: Spool, destination: str, *paths: Path) -> list[str]:
    uids = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        spool.add_output(STUDY, str(ds.SOPClassUID), str(ds.SOPInstanceUID), path, destination)
        uids.append(str(ds.SOPInstanceUID))
    return uids


def make_sender(tmp_path: Path, port: int, clock: Clock, **send: object) -> tuple[Sender, Spool, str]:
    destination = f"TESTPACS@127.0.0.1:{port}"
    settings = load_settings(
        None,
        {
            "node": {"data_dir": str(tmp_path)},
            "send": {"destinations": [Peer.parse(destination).model_dump()], "timeout_s": 5, **send},
        },
    )
    spool = Spool(tmp_path, fsync=False, clock=clock)
    return Sender(settings, spool, AuditLog(tmp_path / "audit.jsonl"), clock=clock), spool, destination


def test_destination_down_then_up_delivers_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    clock = Clock()
    sender, spool, destination = make_sender(tmp_path, port, clock, backoff_initial_s=10, backoff_max_s=40)
    uids = queue(spool, destination, CT, MR)
    assert sender.run_once()  # nobody listens: both wait
    assert {o.state for o in spool.outputs()} == {"retrying"}
    assert not sender.run_once()  # not due before the backoff
    clock.now += 10
    sender.run_once()
    assert [o.attempts for o in spool.outputs()] == [2, 2]
    assert min(o.next_attempt_at for o in spool.outputs()) == clock.now + 20  # doubled
    pacs = StoreSCP(port).start()
    try:
        clock.now += 20
        assert sender.run_once()
        assert {o.state for o in spool.outputs()} == {"sent"}
        clock.now += 1000
        assert not sender.run_once()  # nothing due any more: no second delivery
        assert sorted(pacs.uids()) == sorted(uids)
        assert pacs.calls == 2
    finally:
        pacs.stop()


def test_permanent_rejection_is_dead_with_reason(tmp_path: Path) -> None:
    port = free_port()
    clock = Clock()
    pacs = StoreSCP(port, status=lambda ds: 0xA900 if ds.Modality == "CT" else 0x0000).start()
    try:
        sender, spool, destination = make_sender(tmp_path, port, clock)
        queue(spool, destination, CT, MR)
        counts = sender.deliver(destination, spool.due_outputs())
        assert (counts.sent, counts.dead, counts.retrying) == (1, 1, 0)
        by_state = {o.state: o for o in spool.outputs()}
        assert "0xA900" in by_state["dead"].last_error
        assert by_state["sent"].sop_instance_uid == pacs.uids()[0]
    finally:
        pacs.stop()


def test_out_of_resources_is_retried_until_the_cap(tmp_path: Path) -> None:
    port = free_port()
    clock = Clock()
    pacs = StoreSCP(port, status=lambda ds: 0xA700).start()
    try:
        sender, spool, destination = make_sender(tmp_path, port, clock, max_attempts=3, backoff_initial_s=1)
        queue(spool, destination, CT)
        states = []
        for _ in range(3):
            sender.run_once()
            states.append(spool.outputs()[0].state)
            clock.now += 100
        assert states == ["retrying", "retrying", "dead"]
        assert pacs.calls == 3 and pacs.uids() == []
        assert "0xA700" in spool.outputs()[0].last_error
    finally:
        pacs.stop()


def test_unreadable_output_file_is_dead_and_others_still_go(tmp_path: Path) -> None:
    port = free_port()
    clock = Clock()
    pacs = StoreSCP(port).start()
    try:
        sender, spool, destination = make_sender(tmp_path, port, clock)
        broken = tmp_path / "broken.dcm"
        broken.write_bytes(CT.read_bytes()[:300])
        spool.add_output(STUDY, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.999", broken, destination)
        uids = queue(spool, destination, MR)
        sender.run_once()
        states = {o.sop_instance_uid: o.state for o in spool.outputs()}
        assert states == {"1.2.3.999": "dead", uids[0]: "sent"}
    finally:
        pacs.stop()


def test_echo() -> None:
    port = free_port()
    pacs = StoreSCP(port).start()
    try:
        assert echo(Peer.parse(pacs.peer), calling_ae_title="SAMIE_NODE") > 0
    finally:
        pacs.stop()
    with pytest.raises(DeliveryError) as info:
        echo(Peer.parse(pacs.peer), calling_ae_title="SAMIE_NODE", timeout_s=2)
    assert info.value.transient
