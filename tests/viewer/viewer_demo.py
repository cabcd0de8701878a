"""The radiologist's view on this machine: a PACS, the node and the OHIF viewer, with the demo studies.

Run by ``scripts/viewer-demo`` (``make viewer``). It starts Orthanc with its DICOMweb plugin (the PACS),
``samie-node serve`` (returning its results to the PACS that sent the study, and classifying with the
packaged demonstration model, trained on synthetic images and not for clinical use) and the OHIF viewer served
beside a ``/dicom-web`` proxy to Orthanc, sends the three generated demo studies (a CT series, an
ultrasound image, an RGB photograph) from Orthanc to the node, waits until each study's SEG and SR are
back in Orthanc, prints the viewer's URLs and keeps everything running until Ctrl-C.

It uses the same peers as the test suite (``tests/peers.py``, ``tests/viewer_support.py``); everything
runs as the current user on loopback (the viewer too, unless ``--host`` says otherwise).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import pytest  # peers report a missing tool with pytest.fail
from peers import running_node  # tests/ is on PYTHONPATH (scripts/viewer-demo), as pytest's pythonpath has it
from viewer_support import require_viewer_parts, running_dicomweb_orthanc, running_viewer, wait_for_results

from samie_node.engine.demo_classifier import DEMO_CLASSIFIER, DEMO_CLASSIFIER_NAME
from samie_node.testing.sample_studies import ct_series, rgb_photograph, ultrasound_image, write_datasets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="the viewer's listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3000, help="the viewer's port (default 3000; 0: any free port)")
    parser.add_argument(
        "--work-dir", type=Path, help="where Orthanc and the node keep their data (default: a new temporary folder)"
    )
    parser.add_argument("--no-wait", action="store_true", help="stop everything once the URLs are printed")
    args = parser.parse_args(argv)
    try:
        require_viewer_parts(browser=False)
    except pytest.fail.Exception as exc:
        print(f"viewer-demo: {exc}", file=sys.stderr)
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="samie-viewer-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    ct, _ = ct_series(slices=12, rows=128, columns=128, seed=5)
    ultrasound, _ = ultrasound_image()
    photograph, _ = rgb_photograph()
    studies = {"CT series": ct, "ultrasound image": [ultrasound], "RGB photograph": [photograph]}
    print(f"viewer-demo: working in {work}", flush=True)
    with (
        running_dicomweb_orthanc(work / "pacs") as orthanc,
        running_node(
            work,
            send={"return_to_caller": True, "return_port": orthanc.dicom_port},
            classifier={"checkpoint": str(DEMO_CLASSIFIER)},
        ) as node,
    ):
        print(f"Orthanc (PACS): http://127.0.0.1:{orthanc.http_port}/app/explorer.html, DICOM {orthanc.peer}")
        print(f"samie-node: {node.peer} (log: {node.log_path})", flush=True)
        print(f"classifier: {DEMO_CLASSIFIER_NAME}", flush=True)
        orthanc.add_modality("samie", "SAMIE_NODE", "127.0.0.1", node.port)
        for name, datasets in studies.items():
            paths = write_datasets(datasets, work / "studies" / name.replace(" ", "-"))
            orthanc.store_to("samie", [orthanc.upload(path) for path in paths])
            print(f"sent the {name} ({len(paths)} instance(s)) from Orthanc to the node", flush=True)
        for name, datasets in studies.items():
            started = time.monotonic()
            wait_for_results(orthanc, str(datasets[0].StudyInstanceUID))
            print(f"SEG and SR of the {name} are in Orthanc ({time.monotonic() - started:.0f} s)", flush=True)
        dicomweb = f"http://127.0.0.1:{orthanc.http_port}/dicom-web"
        with running_viewer(dicomweb, host=args.host, port=args.port, log_path=work / "viewer.log") as url:
            print(f"\nThe viewer: {url}/")
            for name, datasets in studies.items():
                print(f"  {name}: {url}/viewer?StudyInstanceUIDs={datasets[0].StudyInstanceUID}")
            print(
                "In a study, double-click the SEG thumbnail (then 'Yes') for the overlay; reload the study and "
                "double-click the SR thumbnail for the findings.",
                flush=True,
            )
            if not args.no_wait:
                print("Ctrl-C stops Orthanc, the node and the viewer.", flush=True)
                _wait_for_interrupt()
    return 0


def _wait_for_interrupt() -> None:
    stop = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handler)
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
