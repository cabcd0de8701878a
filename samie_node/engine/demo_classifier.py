"""The demonstration classifier shipped in the package: what it is, where it lies, the hash it must have.

It was trained by ``scripts/train_demo_classifier.py`` on generated ultrasound-like phantoms
(``samie_node.testing.lesion_phantoms``: benign-looking round or oval masses vs malignant-looking
irregular or spiculated ones), on their SAM-IE enhanced images. It has never seen a patient's image: it
exists so that ``samie-node demo`` and ``make viewer`` show the whole mission, classification included,
on a fresh machine. Its name says so wherever it is reported (the SR's algorithm identification, the
demo's output). ``samie-node serve`` does not use it unless ``[classifier] checkpoint`` names it.

The node refuses the file at load when its SHA-256 is not :data:`DEMO_CLASSIFIER_SHA256`.
"""

from __future__ import annotations

from pathlib import Path

#: The model's name, as the SR's algorithm identification and the demo print it (at most 64 characters).
DEMO_CLASSIFIER_NAME = "SAM-IE demo classifier, synthetic images, not for clinical use"
#: The checkpoint file inside the installed package.
DEMO_CLASSIFIER = Path(__file__).resolve().parent / "demo_model" / "samie-demo-classifier-synthetic.pt"
#: Its SHA-256 (also in the ``.sha256`` sidecar beside it).
DEMO_CLASSIFIER_SHA256 = "3e48fa23697cf34eeafd01e10bad94ede2e354648c2b1d83b4bba601b286e0fd"
