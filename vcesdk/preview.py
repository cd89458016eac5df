"""PNG previews: NCCT | sCECT | difference, one row per slice level (one phase) or one row per
phase (one slice)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError
from .io.atomic import atomic_output

SOFT_TISSUE_WINDOW = (50.0, 400.0)  # (level, width) HU, the usual abdominal soft-tissue window
DIFFERENCE_RANGE_HU = 200.0  # difference image maps [-200, +200] HU to black..white


def window_to_uint8(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map HU through a display window (level, width) to uint8 0..255, clipped."""
    lo = level - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - lo) / width
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _aspect_resize(img: np.ndarray, pixel_aspect: float, height: int):
    from PIL import Image

    h, w = img.shape
    out_w = max(1, int(round(w * pixel_aspect * height / h)))
    return Image.fromarray(img).resize((out_w, height), Image.BILINEAR)


def preview_strip(ncct_hu: np.ndarray, scect_hu: np.ndarray, path: str | os.PathLike,
                  slices: Sequence[int] | None = None, spacing_mm: Sequence[float] = (1, 1, 1),
                  window: tuple[float, float] = SOFT_TISSUE_WINDOW, row_height: int = 256,
                  overwrite: bool = False) -> Path:
    """Write a PNG with one row per slice level: NCCT | sCECT | sCECT - NCCT.

    NCCT and sCECT are shown in `window` (level, width HU); the difference maps
    -200..+200 HU to black..white (mid-grey = no change).

    Args:
        ncct_hu: float32 (D, H, W) input, HU.
        scect_hu: float32 (D, H, W) synthetic output, HU, same shape.
        path: PNG file to write (atomically).
        slices: slice indices to show; default: 25 %, 50 % and 75 % of the depth.
        spacing_mm: (z, y, x) spacing, for the in-plane aspect ratio.
        window: (level, width) display window in HU.
        row_height: pixel height of each row.
        overwrite: replace an existing file.

    Returns:
        The PNG path.

    Raises:
        InputError: shapes differ or a slice index is out of range.
    """
    a, b = np.asarray(ncct_hu), np.asarray(scect_hu)
    if a.shape != b.shape or a.ndim != 3:
        raise InputError(f"NCCT and sCECT must be (D, H, W) of the same shape, got {a.shape} "
                         f"and {b.shape}")
    depth = a.shape[0]
    if slices is None:
        slices = sorted({int(depth * f) for f in (0.25, 0.5, 0.75)})
    for k in slices:
        if not 0 <= k < depth:
            raise InputError(f"slice {k} out of range 0..{depth - 1}")
    aspect = float(spacing_mm[2]) / float(spacing_mm[1])
    rows = [_row([a[k], b[k], b[k] - a[k]], window, aspect, row_height) for k in slices]
    return _save_sheet(rows, path, overwrite)


def preview_phases(ncct_hu: np.ndarray, scect_hu: dict[str, np.ndarray],
                   path: str | os.PathLike, slice_index: int | None = None,
                   spacing_mm: Sequence[float] = (1, 1, 1),
                   window: tuple[float, float] = SOFT_TISSUE_WINDOW, row_height: int = 256,
                   overwrite: bool = False) -> Path:
    """Write a PNG with one row per contrast phase at one slice: NCCT | sCECT | sCECT - NCCT,
    each row labelled with its phase (e.g. "AP", "PVP", "DP").

    Args:
        ncct_hu: float32 (D, H, W) input, HU.
        scect_hu: phase name -> float32 (D, H, W) synthetic output, HU, same shape; rows in
            this order.
        path: PNG file to write (atomically).
        slice_index: the slice shown; default the middle one.
        spacing_mm: (z, y, x) spacing, for the in-plane aspect ratio.
        window: (level, width) display window in HU.
        row_height: pixel height of each row.
        overwrite: replace an existing file.

    Returns:
        The PNG path.

    Raises:
        InputError: no phase, shapes differ, or the slice index is out of range.
    """
    from PIL import ImageDraw

    a = np.asarray(ncct_hu)
    if not scect_hu:
        raise InputError("no synthetic phase to show")
    for name, b in scect_hu.items():
        if np.shape(b) != a.shape or a.ndim != 3:
            raise InputError(f"NCCT and sCECT {name} must be (D, H, W) of the same shape, got "
                             f"{a.shape} and {np.shape(b)}")
    k = a.shape[0] // 2 if slice_index is None else int(slice_index)
    if not 0 <= k < a.shape[0]:
        raise InputError(f"slice {k} out of range 0..{a.shape[0] - 1}")
    aspect = float(spacing_mm[2]) / float(spacing_mm[1])
    rows = []
    for name, b in scect_hu.items():
        b = np.asarray(b)
        row = _row([a[k], b[k], b[k] - a[k]], window, aspect, row_height)
        draw = ImageDraw.Draw(row)
        for x0, text in ((0, "NCCT"), (row.width // 3, name.upper()),
                         (2 * row.width // 3, f"{name.upper()} - NCCT")):
            draw.rectangle((x0, 0, x0 + 8 + 7 * len(text), 16), fill=0)
            draw.text((x0 + 4, 3), text, fill=255)
        rows.append(row)
    return _save_sheet(rows, path, overwrite)


def _row(images: Sequence[np.ndarray], window: tuple[float, float], aspect: float,
         row_height: int):
    """One row of tiles: the first two in `window`, the third as a difference image."""
    from PIL import Image

    tiles = [window_to_uint8(images[0], *window), window_to_uint8(images[1], *window),
             window_to_uint8(images[2], 0.0, 2 * DIFFERENCE_RANGE_HU)]
    imgs = [_aspect_resize(t, aspect, row_height) for t in tiles]
    row = Image.new("L", (sum(i.width for i in imgs) + 8 * (len(imgs) - 1), row_height), 0)
    x = 0
    for img in imgs:
        row.paste(img, (x, 0))
        x += img.width + 8
    return row


def _save_sheet(rows: list, path: str | os.PathLike, overwrite: bool) -> Path:
    """Stack rows (8 px apart) into one grey PNG, written atomically."""
    from PIL import Image

    sheet = Image.new("L", (max(r.width for r in rows), sum(r.height for r in rows)
                            + 8 * (len(rows) - 1)), 0)
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height + 8
    p = Path(path)
    with atomic_output(p, is_dir=False, overwrite=overwrite, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")
    return p
