"""Image sources: an ImageFolder tree (ground truth from folder names) or a flat folder (unlabeled), recursively.

Files that are not images, or are corrupt, are skipped and listed; awkward images (CMYK, RGBA, palette, 16-bit,
huge) are converted to 8-bit RGB when loaded. Only when nothing usable remains is that an error.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from ..errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MAX_PIXELS = 1 << 30  # refuse decompression bombs above ~1 gigapixel
MAX_SIDE = 4096  # huge images are downscaled to this on load
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass
class ImageScan:
    """What a folder holds: (path, folder label or None) for every usable image, and the files skipped."""

    root: Path
    items: list[tuple[Path, str | None]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def labeled(self) -> bool:
        return bool(self.items) and all(label is not None for _, label in self.items)

    @property
    def folder_labels(self) -> list[str]:
        return sorted({label for _, label in self.items if label is not None})


def _check_image(path: Path) -> str | None:
    """None when `path` opens as an image, else the reason it is skipped."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.verify()
        return None
    except Image.DecompressionBombError:
        return "too large (decompression bomb guard)"
    except Exception as exc:  # PIL raises many types for broken files
        return f"not a readable image ({type(exc).__name__})"


def scan_images(folder: str | Path, what: str = "images") -> ImageScan:
    """Find every image below `folder`. Ground truth comes from the first-level sub-folder when *all* images live
    in sub-folders; a folder with images at its top level is treated as unlabeled."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise UserError(f"{what} folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"{what} path {root} is not a folder")
    scan = ImageScan(root.resolve())
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                       p.relative_to(root).parts))
    if not files:
        raise UserError(f"{what} folder {root} is empty")
    top_level = [p for p in files if p.parent == root and p.suffix.lower() in IMAGE_SUFFIXES]
    labeled = not top_level
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            reason = _check_image(path)  # an image with an unusual extension still counts
            if reason is not None:
                scan.skipped.append((path, "not an image file"))
                continue
        else:
            reason = _check_image(path)
            if reason is not None:
                scan.skipped.append((path, reason))
                continue
        label = path.relative_to(root).parts[0] if labeled and path.parent != root else None
        scan.items.append((path.resolve(), label))
    if not scan.items:
        listed = "; ".join(f"{p.name}: {r}" for p, r in scan.skipped[:3])
        raise UserError(f"no usable images in {root} ({len(scan.skipped)} files skipped: {listed})")
    return scan


def load_rgb(path: str | Path) -> Image.Image:
    """Open any supported image as 8-bit RGB: EXIF rotation applied, transparency on white, 16-bit scaled,
    CMYK converted, and huge images reduced so the longest side is at most MAX_SIDE."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = Image.open(path)
        if img.format == "JPEG" and max(img.size) > MAX_SIDE:
            img.draft("RGB", (MAX_SIDE, MAX_SIDE))
        img.load()
    img = ImageOps.exif_transpose(img)
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.BICUBIC)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)  # float images may mark no-data pixels with NaN / inf
        lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
        arr = np.where(finite, arr, lo)
        if hi > lo:
            arr = (arr - lo) / (hi - lo) * 255.0
        else:  # a uniform image keeps its brightness (a white 16-bit image must not come back black)
            level = lo / 65535.0 * 255.0 if mode.startswith("I;16") else lo
            arr = np.full_like(arr, np.clip(level, 0.0, 255.0))
        img = Image.fromarray(np.rint(arr).astype(np.uint8), "L")
    elif mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


ImageFile.LOAD_TRUNCATED_IMAGES = False
