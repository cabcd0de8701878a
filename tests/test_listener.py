"""The transport under the receiver: large PDUs read in blocks, PDU length bounds, File Meta written directly.

:mod:`samie_node.listener` reads PDUs with its own socket class and :mod:`samie_node.receive` builds the
File Meta group itself, so a full 512 KiB slice is sent over loopback by dcmtk's storescu and by pynetdicom
and must be stored byte for byte as pynetdicom would have written it.
"""

from __future__ import annotations

import struct
import subprocess
import time
from pathlib import Path

from peers import require_tool
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from test_receive import receiver, scu

from samie_node.sample_studies import ct_series, write_datasets


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file: everything after its File Meta Information group."""
    raw = path.read_bytes()
    (group_length,) = struct.unpack_from("<L", raw, 132 + 8)
    return raw[132 + 12 + group_length :]


def test_512k_slice_round_trips_byte_exactly_from_dcmtk_and_pynetdicom(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    datasets, _ = ct_series(slices=2, rows=512, columns=512, seed=7)
    sources = write_datasets(datasets, tmp_path / "in")
    with receiver(tmp_path) as (node, settings):
        subprocess.run(
            [storescu, "-aec", settings.node.ae_title, "127.0.0.1", str(settings.node.port), str(sources[0])],
            check=True,
            timeout=60,
        )
        assoc = scu().associate("127.0.0.1", settings.node.port, ae_title=settings.node.ae_title)
        assert assoc.is_established
        try:
            assert assoc.send_c_store(sources[1]).Status == 0x0000
        finally:
            assoc.release()
        assert node.stored == 2
        for source, dataset in zip(sources, datasets, strict=True):
            [stored] = (settings.node.data_dir / "spool").rglob(f"{dataset.SOPInstanceUID}.dcm")
            file_meta = create_file_meta(
                sop_class_uid=dataset.SOPClassUID,
                sop_instance_uid=dataset.SOPInstanceUID,
                transfer_syntax=dataset.file_meta.TransferSyntaxUID,
                implementation_uid=node.ae.implementation_class_uid,
                implementation_version=node.ae.implementation_version_name or "",
            )
            expected = b"\x00" * 128 + b"DICM" + encode_file_meta(file_meta) + dataset_bytes(source)
            assert len(expected) > 512 * 1024
            assert stored.read_bytes() == expected


def test_p_data_longer_than_negotiated_gets_abort_and_node_keeps_serving(tmp_path: Path) -> None:
    with receiver(tmp_path) as (_, settings):
        assoc = scu().associate("127.0.0.1", settings.node.port, ae_title=settings.node.ae_title)
        assert assoc.is_established
        raw = assoc.dul.socket.socket  # type: ignore[union-attr]
        assert raw is not None
        # A P-DATA-TF header announcing one byte more than the node negotiated, and nothing after it.
        raw.sendall(struct.pack(">BBL", 0x04, 0, settings.node.maximum_pdu_length + 1))
        deadline = time.monotonic() + 10
        while not assoc.is_aborted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted
        again = scu().associate("127.0.0.1", settings.node.port, ae_title=settings.node.ae_title)
        assert again.is_established
        assert again.send_c_echo().Status == 0x0000
        again.release()
