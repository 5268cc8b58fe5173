"""Writing a DICOM series from a NIfTI volume's real voxels (what a scanner export looks like), for tests."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_series(
    data: np.ndarray,
    affine: np.ndarray,
    folder: Path,
    rng: np.random.Generator,
    patient: str = "P001",
    intercept: int = -1024,
    modality: str = "CT",
) -> list[Path]:
    """data [X, Y, Z] (integers) with its RAS affine → one file per Z slice under `folder`, with random names
    in nested sub-folders, stored as unsigned values + RescaleIntercept. Returns the file paths."""
    intercept = min(intercept, int(data.min()))  # stored values must be >= 0
    lps = RAS_TO_LPS @ affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    series, study = generate_uid(), generate_uid()
    paths = []
    for k in rng.permutation(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series, study
        ds.PatientID, ds.Modality = patient, modality
        ds.InstanceNumber = int(rng.integers(1, 10_000))  # deliberately meaningless: order comes from positions
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0, 0, k, 1.0]))[:3]]
        ds.ImageOrientationPatient = [float(v) for v in (*(lps[:3, 0] / spacing[0]), *(lps[:3, 1] / spacing[1]))]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # [between rows, between columns]
        ds.SliceThickness = float(spacing[2])
        pixels = (data[:, :, k].T.astype(np.int32) - intercept).astype(np.uint16)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = intercept, 1
        ds.PixelData = pixels.tobytes()
        sub = folder / f"d{int(rng.integers(0, 3))}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / uuid.UUID(int=int(rng.integers(0, 2**63))).hex  # no suffix, no order
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
