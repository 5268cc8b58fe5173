"""Pictures of volumes: three orthogonal middle slices per sample, its label map overlaid in colour, the patient's
sides lettered at each view's edges, tiled into one RGB picture under two caption lines per row (`voxfm inspect`).

Views are drawn as they are cut from a RAS volume, with no radiological left-right swap: in every view one axis
runs left → right and one bottom → top, each in the direction its index grows. `VIEWS` says which axes, and both
`middle_slices` and `edge_letters` read it, so the letters follow the cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RAS_ENDS = (("L", "R"), ("P", "A"), ("I", "S"))  # the patient's side at the low and the high index of X, Y, Z
VIEWS = (("axial", 0, 1), ("coronal", 0, 2), ("sagittal", 1, 2))  # (view, axis drawn left → right, bottom → top)
FONT = ImageFont.load_default()
TEXT = (255, 255, 255)  # captions and letters: white, so a grey row stays grey
LINE_PX = 13  # one caption line
CAPTION_PX = 2 * LINE_PX + 3  # a row's two caption lines
PAD = 14  # around each view: room for its letters
LETTER_GAP = 3  # between a letter and the slice it names a side of
# Saturated, mutually distinct colours (Sasha Trubetskoy's list), class c → PALETTE[(c - 1) % 8]
PALETTE = np.array(
    [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
    + [(240, 50, 230)],
    dtype=np.float32,
)
FILL_ALPHA = 0.35  # a class's tint: the grey structure under it stays readable


@dataclass(frozen=True)
class Row:
    """One sample of a montage: `title` is shortened from the left when too wide (a path keeps its file name),
    `details` from the right."""

    title: str
    details: str
    image: np.ndarray  # [X, Y, Z] in RAS, normalised to [0, 1]
    label: np.ndarray | None = None  # [X, Y, Z] integer classes on the image's grid, 0 = background


def middle_slices(vol: np.ndarray) -> list[np.ndarray]:
    """vol: [X, Y, Z] in RAS → the axial [Y, X], coronal [Z, X] and sagittal [Z, Y] middle slices as drawn:
    row 0 at the top is the high end of the upward axis (anterior, superior), column 0 the low end of the other."""
    planes = []
    for _, across, up in VIEWS:
        cut = 3 - across - up
        plane = np.take(vol, vol.shape[cut] // 2, axis=cut)  # [across, up]: the kept axes keep their order
        planes.append(np.flipud(plane.T))
    return planes


def edge_letters(view: int) -> dict[str, str]:
    """The patient's side at each edge of `VIEWS[view]` as `middle_slices` draws it, e.g. axial:
    {"left": "L", "right": "R", "top": "A", "bottom": "P"}."""
    _, across, up = VIEWS[view]
    return {
        "left": RAS_ENDS[across][0],
        "right": RAS_ENDS[across][1],
        "top": RAS_ENDS[up][1],
        "bottom": RAS_ENDS[up][0],
    }


def overlay(grey: np.ndarray, label: np.ndarray | None) -> np.ndarray:
    """grey: [H, W] uint8, label: [H, W] integer classes or None → [H, W, 3] uint8: every class but 0 tinted with its
    palette colour and outlined in it; without a label the picture stays grey."""
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    if label is not None:
        label = label.astype(np.int64)
        labelled = label != 0
        colour = PALETTE[(label - 1) % len(PALETTE)]  # [H, W, 3]
        rgb[labelled] = (1 - FILL_ALPHA) * rgb[labelled] + FILL_ALPHA * colour[labelled]
        outline = labelled & _boundary(label)
        rgb[outline] = colour[outline]
    return rgb.round().astype(np.uint8)


def _boundary(label: np.ndarray) -> np.ndarray:
    """[H, W] bool: pixels with another class among their 4 neighbours (outside the picture counts as class 0)."""
    p = np.pad(label, 1)
    centre = p[1:-1, 1:-1]
    return (centre != p[:-2, 1:-1]) | (centre != p[2:, 1:-1]) | (centre != p[1:-1, :-2]) | (centre != p[1:-1, 2:])


def fit_text(text: str, width: float, keep_end: bool = True) -> str:
    """`text`, or as much of it as fits in `width` pixels with "..." for the rest: its start cut (keep_end: a path
    keeps its file name) or its end."""
    if FONT.getlength(text) <= width:
        return text
    for n in range(len(text) - 1, 0, -1):
        short = "..." + text[-n:] if keep_end else text[:n] + "..."
        if FONT.getlength(short) <= width:
            return short
    return "..."


def _draw_letter(draw: ImageDraw.ImageDraw, letter: str, x: int, y: int) -> None:
    """The letter's inked box starts at (x, y)."""
    left, top, _, _ = (int(v) for v in FONT.getbbox(letter))
    draw.text((x - left, y - top), letter, fill=TEXT, font=FONT)


def _draw_letters(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], letters: dict[str, str]) -> None:
    """Each side's letter just outside the slice drawn in `box` (x0, y0, x1, y1), centred along that edge."""
    x0, y0, x1, y1 = box
    for edge, letter in letters.items():
        left, top, right, bottom = (int(v) for v in FONT.getbbox(letter))
        w, h = right - left, bottom - top
        x = {"left": x0 - LETTER_GAP - w, "right": x1 + LETTER_GAP}.get(edge, (x0 + x1 - w) // 2)
        y = {"top": y0 - LETTER_GAP - h, "bottom": y1 + LETTER_GAP}.get(edge, (y0 + y1 - h) // 2)
        _draw_letter(draw, letter, x, y)


def _fitted(plane: np.ndarray, tile: int, resample: Image.Resampling) -> np.ndarray:
    """plane: [H, W] → the same scaled so its longer side is `tile` pixels."""
    img = Image.fromarray(plane)
    scale = tile / max(img.size)
    return np.asarray(img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample))


def montage(rows: list[Row], tile: int = 160) -> Image.Image:
    """One RGB picture, a row per sample: its title and details over its axial, coronal and sagittal middle slices,
    each fitted into a `tile`-pixel square centred in a cell `PAD` pixels wider on every side, where its edge
    letters go. A labelled row shows its classes in colour; the rest of the picture is grey."""
    cell = tile + 2 * PAD
    row_px = CAPTION_PX + cell
    picture = Image.new("RGB", (3 * cell, len(rows) * row_px))
    draw = ImageDraw.Draw(picture)
    for r, row in enumerate(rows):
        top = r * row_px
        draw.text((2, top + 1), fit_text(row.title, 3 * cell - 4), fill=TEXT, font=FONT)
        draw.text((2, top + 1 + LINE_PX), fit_text(row.details, 3 * cell - 4, keep_end=False), fill=TEXT, font=FONT)
        labels = middle_slices(row.label) if row.label is not None else [None] * 3
        for v, (plane, label) in enumerate(zip(middle_slices(row.image), labels)):
            grey = _fitted((np.clip(plane, 0, 1) * 255).round().astype(np.uint8), tile, Image.Resampling.BILINEAR)
            if label is not None:  # classes as they are: nearest neighbour, on the grey slice's pixels
                label = _fitted(np.ascontiguousarray(label, dtype=np.int32), tile, Image.Resampling.NEAREST)
            h, w = grey.shape
            x0, y0 = v * cell + PAD + (tile - w) // 2, top + CAPTION_PX + PAD + (tile - h) // 2
            picture.paste(Image.fromarray(overlay(grey, label)), (x0, y0))
            _draw_letters(draw, (x0, y0, x0 + w, y0 + h), edge_letters(v))
    return picture
