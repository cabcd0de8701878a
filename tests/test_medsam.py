"""MedSAM as a segmenter: its published inference, step by step, on a small ViT-B-shaped model.

The real ``medsam_vit_b.pth`` cannot be downloaded here, so the model is a SAM with MedSAM's shapes (1024 px
input, 64 x 64 embedding, 256 x 256 masks) and few channels, random weights. The reference below is an
independent re-implementation of ``MedSAM_Inference.py`` (bowang-lab/MedSAM) written from the published
script: scikit-image's resize of the 3-channel image, ``astype(np.uint8)``, min-max, the encoder, the box
scaled per axis, prompt encoder, mask decoder, sigmoid, bilinear, > 0.5. The node's segmenter must agree
with it; SAM's own preprocessing on the same weights must not (so the comparison can fail).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from engine_fixtures import CPU, ThresholdSegmenter, pydicom_file, read_testdata, small_sam
from segment_anything.modeling import Sam
from skimage import transform

from samie_node.config import SegmenterSettings, load_settings
from samie_node.encode.seg import AlgorithmInfo
from samie_node.engine.infer import SourceImage, run_chunk
from samie_node.engine.masks import MaskSet
from samie_node.engine.medsam import MEDSAM_SIZE, MedSamSegmenter, medsam_input, medsam_resize
from samie_node.engine.models import Models
from samie_node.engine.prepare import prepare_dataset
from samie_node.engine.sam import Placement, SamSegmenter
from samie_node.engine.weights import load_medsam, load_segmenter
from samie_node.errors import ConfigError, ModelError
from samie_node.testing.sample_studies import ultrasound_image

MODEL_SEED = 7


def _medsam_model() -> Sam:
    return small_sam(seed=MODEL_SEED, image_size=MEDSAM_SIZE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("medsam") / "medsam_vit_b.pth"
    torch.save(_medsam_model().state_dict(), path)
    return path


def _settings(checkpoint: Path, **extra: object) -> SegmenterSettings:
    return SegmenterSettings(kind="medsam", medsam_checkpoint=checkpoint, **extra)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def medsam(checkpoint: Path) -> Iterator[SamSegmenter]:
    # Built with another seed: only the checkpoint's weights can make it agree with the reference.
    yield load_medsam(
        checkpoint, _settings(checkpoint), Placement(CPU, None), build=lambda: small_sam(seed=1, image_size=MEDSAM_SIZE)
    )


# -- the reference: MedSAM_Inference.py's steps, written out here ---------------------------------------


def reference_resize(img_3c: np.ndarray) -> np.ndarray:
    """The published resize before its cast (float64, (1024, 1024, 3))."""
    resized: np.ndarray = transform.resize(img_3c, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True)
    return resized


def reference_normalise(resized: np.ndarray) -> np.ndarray:
    img_1024 = resized.astype(np.uint8)
    normalised: np.ndarray = (img_1024 - img_1024.min()) / np.clip(
        img_1024.max() - img_1024.min(), a_min=1e-8, a_max=None
    )
    return normalised


@functools.cache
def _literal(index: int) -> np.ndarray:
    """The published resize of ``[*_images(), _flat_image()][index]``, computed once (seconds each)."""
    return reference_resize([*_images(), _flat_image()][index])


@torch.no_grad()
def reference_probabilities(model: Sam, index: int, box_np: np.ndarray) -> np.ndarray:
    """(K, H, W) sigmoid probabilities, upsampled, for (K, 4) boxes; MedSAM thresholds them at 0.5."""
    height, width, _ = _images()[index].shape
    tensor = torch.tensor(reference_normalise(_literal(index))).float().permute(2, 0, 1).unsqueeze(0)
    box_1024 = box_np / np.array([width, height, width, height]) * 1024
    image_embedding = model.image_encoder(tensor)
    box_torch = torch.as_tensor(box_1024, dtype=torch.float)[:, None, :]
    sparse, dense = model.prompt_encoder(points=None, boxes=box_torch, masks=None)
    low_res_logits, _ = model.mask_decoder(
        image_embeddings=image_embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    low_res_pred = F.interpolate(
        torch.sigmoid(low_res_logits), size=(height, width), mode="bilinear", align_corners=False
    )
    return low_res_pred[:, 0].numpy()


def _images() -> list[np.ndarray]:
    """A grey non-square image (upsampled) with a bright disc, and a colour one larger than 1024 (anti-aliased)."""
    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[:180, :300]
    grey = np.clip(60 + rng.normal(0, 12, rows.shape) + 140 * ((rows - 90) ** 2 + (cols - 200) ** 2 < 35**2), 0, 255)
    grey_rgb = np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
    colour = rng.integers(0, 256, (1100, 1040, 3), dtype=np.uint8)
    colour[300:600, 200:500] = np.clip(rng.normal((220, 60, 30), 12, (300, 300, 3)), 0, 255).astype(np.uint8)
    return [grey_rgb, colour]


def _flat_image() -> np.ndarray:
    """Flat regions, where the published cast's truncation meets float noise."""
    image = np.full((200, 150, 3), (30, 90, 160), np.uint8)
    image[50:120, 40:100] = (250, 40, 10)
    return image


BOXES = [np.array([[160, 50, 240, 130], [10, 10, 60, 170]], np.float32), np.array([[200, 300, 500, 600]], np.float32)]


def test_preprocessing_is_the_published_one() -> None:
    for index, image in enumerate([*_images(), _flat_image()]):
        literal = _literal(index)
        difference = medsam_resize(image).astype(int) - literal.astype(np.uint8)
        # Equal, except where the published cast truncates a whole number that float noise put just below.
        whole = np.abs(literal - np.rint(literal)) < 1e-9
        assert set(np.unique(difference[~whole])) == {0}
        assert set(np.unique(difference[whole])) <= {0, 1}
        ours = medsam_input(image)
        assert ours.shape == (1024, 1024, 3) and ours.dtype == np.float32
        assert float(ours.min()) == 0.0 and float(ours.max()) == 1.0
        one_level = 1.0 / float(np.ptp(literal.astype(np.uint8)))
        assert float(np.abs(ours - reference_normalise(literal)).max()) <= one_level + 1e-6
        assert float(np.abs(ours - reference_normalise(literal))[~whole].max()) < 1e-6
    # Not SAM's preprocessing: no mean/std, no long-side resize with padding.
    grey = _images()[0]
    assert not np.allclose(medsam_input(grey), (transform.resize(grey, (1024, 1024)) - 0.485) / 0.229, atol=0.1)


def test_masks_and_embeddings_match_the_published_inference(medsam: SamSegmenter) -> None:
    reference_model = _medsam_model()
    assert isinstance(medsam, MedSamSegmenter)
    for index, (image, boxes) in enumerate(zip(_images(), BOXES, strict=True)):
        embedding = medsam.embed([image])[0]
        assert embedding.features.shape == (1, 32, 64, 64)
        expected = reference_probabilities(reference_model, index, boxes)
        logits_chunks = [logits for logits, _ in medsam._decode(embedding, boxes)]
        probabilities = torch.sigmoid(torch.cat(logits_chunks)).numpy()
        assert probabilities.shape == (len(boxes), *image.shape[:2])
        np.testing.assert_allclose(probabilities, expected, rtol=0, atol=2e-5)
        masks = medsam.segment([image], [boxes])[0].masks
        decided = np.abs(expected - 0.5) > 1e-4  # pixels float noise cannot flip
        assert np.array_equal(masks[decided], (expected > 0.5)[decided])
        assert 0 < int(masks.sum()) < masks.size  # random weights still make a non-trivial mask


def test_sam_preprocessing_on_the_same_weights_differs(medsam: SamSegmenter) -> None:
    """The comparison above can fail: SAM's path on the same model gives other probabilities."""
    plain = SamSegmenter(medsam.model, medsam.identity, medsam.settings, Placement(CPU, None), lite=False)
    image, boxes = _images()[0], BOXES[0]
    sam_logits = torch.cat([logits for logits, _ in plain._decode(plain.embed([image])[0], boxes)])
    expected = reference_probabilities(_medsam_model(), 0, boxes)
    # Random weights keep probabilities near 0.5; the agreement above is to 2e-5, this is 500 times that.
    assert float(np.abs(torch.sigmoid(sam_logits).numpy() - expected).max()) > 1e-2


def test_identity_and_modes(medsam: SamSegmenter, checkpoint: Path) -> None:
    assert medsam.name == "MedSAM"
    assert "ViT-B" in medsam.version
    assert medsam.weights_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    image = _images()[0]
    auto = medsam.segment([image])[0]  # automatic mode: LiteMedSAM's box proposals, filtered
    assert auto.masks.shape[1:] == image.shape[:2] and len(auto) <= medsam.settings.max_masks
    boxed = load_medsam(
        checkpoint,
        _settings(checkpoint, mode="box", box=(160, 50, 240, 130)),
        Placement(CPU, None),
        build=_medsam_model,
    )
    configured = boxed.segment([image])[0]
    given = medsam.segment([image], [BOXES[0][:1]])[0]
    assert np.array_equal(configured.masks, given.masks)


def test_checkpoint_errors_are_clear(tmp_path: Path, checkpoint: Path) -> None:
    placement = Placement(CPU, None)
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(ModelError, match=r"not found \(segmenter.medsam_checkpoint"):
        load_medsam(missing, _settings(missing), placement, build=_medsam_model)
    lite_shaped = tmp_path / "sam64.pth"
    torch.save(small_sam(seed=2).state_dict(), lite_shaped)  # a SAM, but not ViT-B-shaped at 1024 px
    with pytest.raises(ModelError, match=r"does not match.*medsam_vit_b\.pth"):
        load_medsam(lite_shaped, _settings(lite_shaped), placement, build=_medsam_model)
    with pytest.raises(ModelError, match=r"does not match.*medsam_vit_b\.pth"):
        load_segmenter(_settings(checkpoint), CPU)  # the small model is not a real ViT-B
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable"):
        load_medsam(garbage, _settings(garbage), placement, build=_medsam_model)
    with pytest.raises(ModelError, match="is a directory"):
        load_medsam(tmp_path, _settings(tmp_path), placement, build=_medsam_model)
    with pytest.raises(ConfigError, match="medsam_checkpoint"):
        load_settings(overrides={"segmenter": {"kind": "medsam"}})


def _frame(dataset: pydicom.Dataset, windowing: str) -> np.ndarray:
    image: np.ndarray = prepare_dataset(dataset, max_pixels=10**8, windowing=windowing)[0].image  # type: ignore[arg-type]
    return image


def test_ct_and_mr_take_medsams_windows() -> None:
    ct = read_testdata("CT_small.dcm")
    hounsfield = ct.pixel_array.astype(np.float64) * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    expected_ct = np.floor((np.clip(hounsfield, -160, 240) + 160) / 400 * 255).astype(np.uint8)
    assert np.array_equal(_frame(ct, "medsam")[..., 0], expected_ct)
    assert not np.array_equal(_frame(ct, "display")[..., 0], expected_ct)  # CT_small has no window: percentiles

    mr = read_testdata("MR_small.dcm")
    values = mr.pixel_array.astype(np.float64)
    values[:4, :4] = 0  # background the MR window must keep at zero
    mr.PixelData = values.astype(mr.pixel_array.dtype).tobytes()
    low, high = np.percentile(values[values > 0], (0.5, 99.5))
    expected_mr = (np.clip(values, low, high) - low) / (high - low) * 255
    expected_mr[values == 0] = 0
    medsam_mr = _frame(mr, "medsam")[..., 0]
    assert np.array_equal(medsam_mr, np.floor(expected_mr).astype(np.uint8))
    assert not np.array_equal(_frame(mr, "display")[..., 0], medsam_mr)  # the file's window 600/1600

    us, _ = ultrasound_image(rows=60, columns=80)  # neither CT nor MR: the display pipeline either way
    assert np.array_equal(_frame(us, "medsam"), _frame(us, "display"))


class _Recording(ThresholdSegmenter):
    """Keeps the images the engine hands the segmenter."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[np.ndarray] = []

    def segment(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence[np.ndarray | None] | None = None,
        modalities: Sequence[str] | None = None,
    ) -> list[MaskSet]:
        self.images.extend(images)
        return super().segment(images, boxes, modalities)


@pytest.mark.parametrize("kind", ["medsam", "litemedsam"])
def test_the_engine_prepares_ct_for_the_configured_model(tmp_path: Path, checkpoint: Path, kind: str) -> None:
    path = pydicom_file("CT_small.dcm")
    settings = load_settings(overrides={"segmenter": {"kind": kind, "medsam_checkpoint": checkpoint}})
    segmenter = _Recording()
    models = Models(segmenter, None, AlgorithmInfo("test", "1", "0" * 64), "cpu")
    run_chunk([SourceImage(str(pydicom.dcmread(path).SOPInstanceUID), path.read_bytes())], models, settings)
    windowing, other = ("medsam", "display") if kind == "medsam" else ("display", "medsam")
    assert len(segmenter.images) == 1
    assert np.array_equal(segmenter.images[0], _frame(pydicom.dcmread(path), windowing))
    assert not np.array_equal(segmenter.images[0], _frame(pydicom.dcmread(path), other))
