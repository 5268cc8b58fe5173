"""What a volume is, from evidence: its modality, and whether it is a label map rather than an image.

The modality is taken from the strongest evidence there is, in this order (`modality_source` records which):
`manifest` (the column) > `dicom` (the Modality tag) > the layout's own metadata: `dataset.json` (nnU-Net's
`channel_names`, the Medical Segmentation Decathlon's `modality`) or `bids` (the file name's suffix) >
`intensities`. Intensities call a volume CT only on robust evidence (air near -1000 HU *and* a soft-tissue mode
near 0-100 HU, from the histogram, not from the minimum), MR only on MR-like evidence (non-negative magnitudes);
anything else is `None`: unknown, rejected unless `unknown_modality=keep`. Intensities never say PET.

A label map is never an image: integer-valued voxels, few distinct values, and neighbouring voxels mostly equal
(a segmentation is piecewise constant; any scan has noise). On the real files in ../shared/data/real, the three
label maps have 63-91% equal neighbours (outside their most common value) and the three scans 3-9%.
"""

from __future__ import annotations

import numpy as np

SOURCES = ("manifest", "dicom", "dataset.json", "bids", "intensities")
UNKNOWN = "unknown"  # the modality of an input sharded with unknown_modality=keep

# names nnU-Net's channel_names and the Decathlon's modality use for MR sequences (compared case-insensitively)
_MR_NAMES = {
    "mr", "mri", "t1", "t1w", "t1c", "t1ce", "t1gd", "t1-gd", "t2", "t2w", "flair", "pd", "pdw", "adc", "dwi",
    "swi", "t2star", "t2starw", "dce", "bold", "cine", "non-contrast", "native", "magnitude", "angio", "ms", "hbv",
}  # fmt: skip
_CT_NAMES = {"ct", "cect", "cta", "ncct"}
_PET_NAMES = {"pet", "pt", "fdg", "psma"}

# BIDS suffixes (the last `_`-separated part of a file name); https://bids-specification.readthedocs.io
BIDS_MR = {
    "T1w", "T2w", "PDw", "T2starw", "FLAIR", "inplaneT1", "inplaneT2", "PDT2", "angio", "T1map", "T2map",
    "T2starmap", "R1map", "R2map", "R2starmap", "PDmap", "MTRmap", "MTsat", "UNIT1", "T1rho", "MWFmap", "MTVmap",
    "Chimap", "S0map", "M0map", "PD", "T2star", "bold", "cbv", "phase", "sbref", "dwi", "epi", "phasediff",
    "phase1", "phase2", "magnitude", "magnitude1", "magnitude2", "fieldmap", "TB1map", "RB1map", "MEGRE", "MESE",
    "VFA", "IRT1", "MP2RAGE", "MPM", "MTS", "MTR", "asl", "m0scan", "TB1DAM", "TB1EPI", "TB1AFI", "TB1TFL",
    "TB1RFM", "TB1SRGE", "RB1COR", "defacemask",
}  # fmt: skip
BIDS_PET = {"pet"}
BIDS_CT = {"ct", "CT"}
LABEL_SUFFIXES = ("_seg", "_dseg", "_mask", "_label", "_labels", "_probseg")  # file stems ending so are labels


def from_name(name: str) -> str | None:
    """A channel or modality name from a dataset.json ("CT", "T2", "FLAIR", "PET"...) → CT/MR/PET, or None for
    names that are a normalisation scheme rather than a modality ("noNorm", "zscore", "rescale_to_0_1")."""
    key = str(name).strip().lower()
    if key in _CT_NAMES:
        return "CT"
    if key in _PET_NAMES:
        return "PET"
    if key in _MR_NAMES or key.startswith(("t1", "t2", "mr")):
        return "MR"
    return None


def from_bids_suffix(suffix: str) -> str | None:
    if suffix in BIDS_PET:
        return "PET"
    if suffix in BIDS_CT:
        return "CT"
    return "MR" if suffix in BIDS_MR else None


def _sample(data: np.ndarray, n: int = 1_000_000) -> np.ndarray:
    """At most about `n` voxels, strided (deterministic): percentiles and histograms of it match the volume's."""
    flat = data.ravel(order="K")  # in memory order: a view of nibabel's Fortran-ordered voxels, not a copy
    return flat[:: max(1, flat.size // n)]


def from_intensities(data: np.ndarray) -> tuple[str | None, str]:
    """(CT, MR or None, the evidence in words) from the voxel values alone."""
    values = _sample(data, 250_000).astype(np.float32)
    low, p5, high = (float(v) for v in np.percentile(values, [0.5, 5, 99.5]))
    air = float(np.mean((values >= -1100) & (values <= -900)))
    body = values[(values > -900) & (values <= 3000)]
    if air >= 0.005 and body.size >= 0.01 * values.size:
        counts, edges = np.histogram(body, bins=195, range=(-900, 3000))  # 20 HU bins
        mode = float(edges[int(np.argmax(counts))] + 10)
        if -200 <= mode <= 200:
            return "CT", f"{air:.0%} of voxels at air (-1000 HU), tissue mode {mode:.0f} HU"
    span = max(high - low, 1e-6)
    if low >= -0.05 * span and high > 0:
        return "MR", f"non-negative magnitudes (0.5th-99.5th percentiles {low:.4g} to {high:.4g})"
    return None, f"neither CT nor MR evidence (0.5/5/99.5th percentiles {low:.4g}/{p5:.4g}/{high:.4g}, {air:.1%} air)"


def label_like(data: np.ndarray, max_values: int = 1024, min_equal: float = 0.5) -> str | None:
    """Why `data` looks like a label map rather than an image, or None: integer values, at most `max_values`
    distinct ones, and at least `min_equal` of the neighbouring voxel pairs (along the first axis, outside the
    most common value: the background) equal."""
    quick = _sample(data, 65_536)  # most images are told apart here, at a twentieth of the cost
    if data.dtype.kind == "f" and not np.array_equal(quick, np.round(quick)) or len(np.unique(quick)) > max_values:
        return None
    values = _sample(data)
    if data.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        return None
    distinct, counts = np.unique(values, return_counts=True)
    if len(distinct) > max_values:
        return None
    step = max(1, data.shape[1] // 64), max(1, data.shape[2] // 64)  # a few dozen planes: plenty, and fast
    a, b = data[:-1, :: step[0], :: step[1]], data[1:, :: step[0], :: step[1]]
    background = distinct[np.argmax(counts)]
    inside = (a != background) | (b != background)
    if not inside.any():
        return None
    equal = float(np.mean(a[inside] == b[inside]))
    if equal < min_equal:
        return None
    return f"integer-valued, {len(distinct)} distinct values, {equal:.0%} of neighbouring voxels equal"
