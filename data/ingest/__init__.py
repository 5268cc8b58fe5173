"""Volumes in: NIfTI and DICOM inputs, preprocessing (orientation, spacing, intensity, foreground), blosc2
payloads, the shard set format and its writer (`voxfm shard`), folder locks, `voxfm inspect` and its montage."""
