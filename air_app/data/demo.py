"""Procedural demo images: four visually distinct classes of 64 px pictures, seeded and tiny on disk.

Used by `assets/make_demo_data.py` (the committed demo set) and by the tests (larger sets made on the fly).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ["red circle", "blue square", "green triangle", "striped texture"]
SIZE = 64


def _background(rng: np.random.Generator) -> Image.Image:
    base = rng.integers(150, 235, size=3)
    noise = rng.normal(0, 12, size=(SIZE, SIZE, 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def draw(name: str, rng: np.random.Generator) -> Image.Image:
    img = _background(rng)
    d = ImageDraw.Draw(img)
    cx, cy = rng.integers(20, 44, size=2)
    r = int(rng.integers(10, 18))
    jitter = lambda c: tuple(int(np.clip(v + rng.integers(-30, 30), 0, 255)) for v in c)  # noqa: E731
    if name == "red circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=jitter((200, 30, 30)))
    elif name == "blue square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=jitter((30, 60, 200)))
    elif name == "green triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=jitter((30, 160, 50)))
    else:
        width = int(rng.integers(3, 7))
        color = jitter((90, 70, 40))
        for x in range(-SIZE, SIZE * 2, width * 2):
            d.line([(x, 0), (x + SIZE, SIZE)], fill=color, width=width)
    return img.filter(ImageFilter.GaussianBlur(0.6))


def make_demo_images(out: Path, per_class: int = 12, seed: int = 0) -> Path:
    """Write <out>/images/<class>/*.jpg and <out>/classes.txt; returns the images folder."""
    images = out / "images"
    if images.exists():
        shutil.rmtree(images)
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        folder = images / name.replace(" ", "_")
        folder.mkdir(parents=True)
        for i in range(per_class):
            draw(name, rng).save(folder / f"{i:02d}.jpg", quality=85)
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    return images
