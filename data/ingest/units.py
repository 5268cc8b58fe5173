"""One unit of `voxfm shard`'s work, a subject's inputs, → its shard samples or a rejection reason per input.

`process_unit` runs in a worker process (`data/ingest/run.py` hands it out and writes what it returns): each input
is read (NIfTI within its byte budget before any voxel is read, or a DICOM series), preprocessed and encoded, every
frame of it before any is written, and whatever one input raises rejects that input only. Once read, its files must
still be the ones hashed (`inputs.check_unchanged`): an input is never sharded under another content's hash.
"""

from __future__ import annotations

import nibabel as nib

from voxfm.data.ingest import payload
from voxfm.data.ingest.inputs import InputVolume, check_unchanged, relative, sample_key
from voxfm.data.ingest.preprocess import PreprocessOptions, check_mb, preprocess
from voxfm.data.ingest.volumes import RejectedVolume, Volume, check_header, load_volume, n_frames

Unit = list[tuple[InputVolume, str]]  # one subject's inputs with their content hashes


def frames_to_shard(vol: InputVolume, mode: str) -> list[int | None]:
    """None: the input as one 3D volume (a 4D one is then rejected with its reason); else the frame indices (one
    channel of a 4D Decathlon image: its own)."""
    if vol.frame is not None:
        return [vol.frame]
    count = 1 if vol.files else n_frames(vol.path)
    if count == 1 or mode == "reject":
        return [None]
    return [0] if mode == "first" else list(range(count))


def _check_nifti_mb(path: str, max_mb: float, frame: int | None) -> None:
    """The byte budget from the header, before any voxel is read (an unreadable file is left to `load_volume`)."""
    try:
        img = nib.load(path)
    except Exception:
        return
    check_mb(img.shape[:3] if frame is not None else img.shape, img.get_data_dtype().itemsize, max_mb)


def check_nifti_header(path: str, opts: PreprocessOptions, frame: int | None) -> None:
    """Every check a NIfTI input's header allows, in the order `read_input` makes them (a dry run's checks)."""
    _check_nifti_mb(path, opts.max_mb, frame)
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many types for damaged files
        raise RejectedVolume(f"unreadable: {type(err).__name__}: {err}") from err
    check_header(img, opts.max_voxels, opts.spacing_bounds, opts.max_anisotropy, frame)


def read_input(vol: InputVolume, opts: PreprocessOptions, frame: int | None) -> Volume:
    if not vol.files:
        _check_nifti_mb(vol.path, opts.max_mb, frame)
        return load_volume(vol.path, opts.max_voxels, opts.spacing_bounds, opts.max_anisotropy, frame)
    from voxfm.data.ingest.dicom import load_series

    return load_series(list(vol.files), opts.max_voxels, opts.spacing_bounds, opts.max_anisotropy, opts.max_mb)


def shard_one(
    vol: InputVolume, opts: PreprocessOptions, codec: str, frame: int | None = None, unknown_modality: str = "reject"
) -> tuple[dict[str, bytes], dict]:
    image = read_input(vol, opts, frame)
    try:
        if vol.label:
            _check_nifti_mb(vol.label, opts.max_mb, None)
        label = (
            load_volume(vol.label, opts.max_voxels, opts.spacing_bounds, opts.max_anisotropy, label=True)
            if vol.label
            else None
        )
    except RejectedVolume as err:
        raise RejectedVolume(f"label {relative(vol.label, vol.root)}: {err}") from err
    img, lab, meta = preprocess(image, vol.modality, opts, label, vol.modality_source, unknown_modality)
    files = {"image.b2": payload.encode(img, codec)}
    if lab is not None:
        files["label.b2"] = payload.encode(lab, codec)
    return files, meta


def process_unit(
    unit: Unit, opts: PreprocessOptions, codec: str, unknown_modality: str = "reject"
) -> list[tuple[InputVolume, str, list | str]]:
    """One subject → per input: its samples [(key, files, meta)] or its rejection reason. Runs in a worker."""
    out = []
    for vol, digest in unit:
        try:
            # every frame of an input is prepared before any is written: an input lands whole or not at all
            samples = []
            for frame in frames_to_shard(vol, opts.frames):
                files, meta = shard_one(vol, opts, codec, frame, unknown_modality)
                meta.update(
                    dataset=vol.dataset,
                    subject=vol.subject,
                    source_path=relative(vol.path, vol.root),
                    content_hash=digest,
                    label_path=relative(vol.label, vol.root) if vol.label else None,
                    frame=frame,
                    layout=vol.layout,
                    n_files=len(vol.files) or 1,
                )
                if opts.keep_dicom_uids and vol.series_uid:
                    meta["series_uid"] = vol.series_uid
                split = frame is not None and vol.frame is None  # frames=all/first: the key names the frame
                key = sample_key(vol, digest) + (f"_f{frame:04d}" if split else "")
                samples.append((key, files, meta))
            check_unchanged(vol)  # the voxels read are the content `digest` names
            out.append((vol, digest, samples))
        except Exception as err:  # whatever one input raises rejects that input only: the run goes on
            out.append((vol, digest, rejection_reason(err)))
    return out


def rejection_reason(err: Exception) -> str:
    """report.json's reason for an input that raised `err`; its kind is the text before the first colon."""
    if isinstance(err, RejectedVolume):
        return str(err)
    if isinstance(err, OSError):
        return f"unreadable: {err}"
    return f"unexpected error ({type(err).__name__}): {err}"
