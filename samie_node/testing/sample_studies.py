"""Generated DICOM studies for the demo, the benchmarks and the tests.

Each generator returns pydicom datasets that are valid instances of their IOD, with a known bright
structure whose position is returned too, so a segmentation can be checked against it. Patient
attributes are fixed, obviously synthetic values; tests use them to prove that no log line carries them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from samie_node.uids import derive_uid

PATIENT_NAME = "SYNTHETIC^PHANTOM"
PATIENT_ID = "SAMIE-PHANTOM-0001"
PATIENT_BIRTH_DATE = "19700101"


@dataclass(frozen=True)
class Lesion:
    """A bright disc (or sphere) placed in a generated image, in pixel coordinates."""

    center_row: float
    center_column: float
    radius: float

    def mask(self, rows: int, columns: int) -> np.ndarray:
        """The disc as a boolean mask."""
        yy, xx = np.mgrid[0:rows, 0:columns]
        inside: np.ndarray = (yy - self.center_row) ** 2 + (xx - self.center_column) ** 2 <= self.radius**2
        return inside


def _base(sop_class_uid: str, sop_instance_uid: str, study_uid: str, series_uid: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    ds.PatientSex = "O"
    today = dt.date(2026, 1, 2)
    ds.StudyDate = today.strftime("%Y%m%d")
    ds.StudyTime = "101500"
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AccessionNumber = "ACC" + study_uid[-8:].replace(".", "")
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "samie-node synthetic study"
    ds.SeriesDescription = f"synthetic {modality}"
    ds.Manufacturer = "samie-node sample_studies"
    ds.SeriesNumber = 1
    ds.Laterality = ""
    ds.PatientOrientation = ""
    return ds


def _speckle(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    noise: np.ndarray = rng.rayleigh(1.0, size=(rows, columns))
    return noise / float(noise.max())


def ct_series(
    slices: int = 20,
    rows: int = 512,
    columns: int = 512,
    *,
    seed: int = 0,
    study_instance_uid: str | None = None,
) -> tuple[list[Dataset], Lesion]:
    """A CT series of ``slices`` 16-bit axial slices with a bright sphere in the middle.

    Pixel data is stored as rescaled HU (slope 1, intercept -1024); the sphere is +80 HU soft tissue
    on a -1000 HU (air) to 0 HU (water body) background, so any sensible window shows it.
    """
    rng = np.random.default_rng(seed)
    study = study_instance_uid or derive_uid("sample-ct-study", str(seed), str(slices), str(rows))
    series = derive_uid(study, "series")
    frame_of_reference = derive_uid(study, "for")
    lesion = Lesion(rows * 0.5, columns * 0.55, min(rows, columns) * 0.1)
    body = Lesion(rows * 0.5, columns * 0.5, min(rows, columns) * 0.42).mask(rows, columns)
    datasets = []
    for index in range(slices):
        sop = derive_uid(series, str(index))
        ds = _base(CTImageStorage, sop, study, series, "CT")
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [-(columns / 2) * 0.7, -(rows / 2) * 0.7, index * 2.5]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = 2.5
        ds.PixelSpacing = [0.7, 0.7]
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        ds.PatientPosition = "HFS"
        del ds.PatientOrientation
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        hu = np.full((rows, columns), -1000.0)
        hu[body] = 0.0 + 20 * rng.standard_normal(int(body.sum()))
        # The sphere's cross-section shrinks towards the ends of the series.
        z = (index - (slices - 1) / 2) / max(slices / 2, 1)
        radius = lesion.radius * float(np.sqrt(max(0.0, 1 - z**2)))
        if radius > 2:
            disc = Lesion(lesion.center_row, lesion.center_column, radius).mask(rows, columns)
            hu[disc] = 80 + 10 * rng.standard_normal(int(disc.sum()))
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        datasets.append(ds)
    return datasets, lesion


def _single_instance(name: str, seed: int, sop_class_uid: str, modality: str) -> Dataset:
    """The one instance of a generated one-instance study, with its UIDs derived from ``name`` and ``seed``."""
    study = derive_uid(f"sample-{name}-study", str(seed))
    series = derive_uid(study, "series")
    ds = _base(sop_class_uid, derive_uid(series, "0"), study, series, modality)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = 1
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    """8-bit pixel data from (rows, columns), (frames, rows, columns) grey or (rows, columns, 3) RGB values."""
    colour = pixels.ndim == 3 and pixels.shape[-1] == 3
    if pixels.ndim == 3 and not colour:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.clip(pixels, 0, 255).astype(np.uint8).tobytes()


def ultrasound_image(rows: int = 480, columns: int = 640, *, seed: int = 1) -> tuple[Dataset, Lesion]:
    """A single-frame greyscale ultrasound image (no frame of reference) with a dark-rimmed bright lesion."""
    rng = np.random.default_rng(seed)
    ds = _single_instance("us", seed, UltrasoundImageStorage, "US")
    lesion = Lesion(rows * 0.45, columns * 0.5, min(rows, columns) * 0.14)
    image = 60 * _speckle(rng, rows, columns) + 30
    image[lesion.mask(rows, columns)] += 140
    _set_pixels(ds, image)
    return ds, lesion


def ultrasound_cine(frames: int = 3, rows: int = 120, columns: int = 160, *, seed: int = 3) -> tuple[Dataset, Lesion]:
    """A multi-frame greyscale ultrasound (a short cine loop) without a frame of reference, as scanners send
    them; a SEG cannot reference such an image (the node writes overlays instead)."""
    rng = np.random.default_rng(seed)
    ds = _single_instance("us-cine", seed, UltrasoundMultiFrameImageStorage, "US")
    lesion = Lesion(rows * 0.5, columns * 0.5, min(rows, columns) * 0.15)
    cine = np.empty((frames, rows, columns))
    for index in range(frames):
        cine[index] = 60 * _speckle(rng, rows, columns) + 30
        cine[index][lesion.mask(rows, columns)] += 140
    ds.FrameTime = 40.0
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    _set_pixels(ds, cine)
    return ds, lesion


def rgb_photograph(rows: int = 400, columns: int = 400, *, seed: int = 2) -> tuple[Dataset, Lesion]:
    """An RGB secondary capture (a dermatoscopy-like photograph): a brown lesion on skin tone."""
    rng = np.random.default_rng(seed)
    ds = _single_instance("rgb", seed, SecondaryCaptureImageStorage, "XC")
    ds.ConversionType = "DI"
    lesion = Lesion(rows * 0.5, columns * 0.5, min(rows, columns) * 0.18)
    image = np.empty((rows, columns, 3))
    image[...] = (224, 182, 160)
    image += 8 * rng.standard_normal((rows, columns, 3))
    image[lesion.mask(rows, columns)] = (96, 58, 40)
    _set_pixels(ds, image)
    return ds, lesion


def write_datasets(datasets: list[Dataset], folder: Path) -> list[Path]:
    """Write datasets as DICOM files named by SOP Instance UID; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def iter_files(folder: Path) -> Iterator[Path]:
    """DICOM files under ``folder`` in a stable order."""
    yield from sorted(p for p in folder.rglob("*") if p.is_file())
