"""Pictures of volumes: three orthogonal middle slices, tiled into one PNG with a caption per row."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def middle_slices(vol: np.ndarray) -> list[np.ndarray]:
    """vol: [X, Y, Z] in RAS → axial, coronal, sagittal middle slices, each flipped so up is anterior/superior."""
    x, y, z = (s // 2 for s in vol.shape)
    axial, coronal, sagittal = vol[:, :, z], vol[:, y, :], vol[x, :, :]  # [X, Y], [X, Z], [Y, Z]
    return [np.flipud(s.T) for s in (axial, coronal, sagittal)]


def montage(rows: list[tuple[str, np.ndarray]], tile: int = 160, caption_px: int = 14) -> Image.Image:
    """(caption, normalised [X, Y, Z] volume in [0, 1]) per row → one greyscale picture: a caption line over the
    row's axial, coronal and sagittal middle slices, each fitted into a `tile`-pixel square."""
    height = len(rows) * (tile + caption_px + 4)
    picture = Image.new("L", (3 * (tile + 4), height), color=0)
    draw = ImageDraw.Draw(picture)
    for r, (caption, vol) in enumerate(rows):
        top = r * (tile + caption_px + 4)
        draw.text((2, top + 1), caption, fill=255)
        for c, plane in enumerate(middle_slices(vol)):
            img = Image.fromarray((np.clip(plane, 0, 1) * 255).round().astype(np.uint8))
            scale = tile / max(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
            picture.paste(img, (c * (tile + 4) + 2, top + caption_px + 2))
    return picture
