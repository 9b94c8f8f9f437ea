"""CLIP image features through the real data path (decode, convert, preprocess, batch), cached by content hash.

f̄(x) for real and synthetic images alike. Only images whose hash is missing from the workspace cache for this model
are decoded and encoded; everything else is a dictionary lookup.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.images import load_rgb
from ..workspace import FeatureCache


class _ImageFiles(Dataset):
    def __init__(self, paths: Sequence[str], preprocess, image_size: int):
        self.paths = list(paths)
        self.preprocess = preprocess
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.preprocess(load_rgb(self.paths[i])), True
        except Exception:  # a file that broke after scanning: reported, not fatal
            return torch.zeros(3, self.image_size, self.image_size), False


def image_loader(paths: Sequence[str], preprocess, image_size: int, batch_size: int = 64,
                 workers: int | None = None) -> DataLoader:
    """Batches of (pixels [B,3,H,W], ok [B]). One background worker on small machines overlaps decoding with
    the forward pass."""
    if workers is None:
        workers = 0 if len(paths) <= batch_size else min(2, max(1, (os.cpu_count() or 2) - 1))
    return DataLoader(_ImageFiles(paths, preprocess, image_size), batch_size=batch_size, shuffle=False,
                      num_workers=workers, persistent_workers=False)


@dataclass
class EncodeReport:
    cached: int
    computed: int
    failed: list[int]  # indices (into the request) of files that could not be decoded


def encode_images_cached(clip, paths: Sequence[str], hashes: Sequence[str], cache: FeatureCache,
                         batch_size: int = 64, progress: Callable[[int, int], None] | None = None,
                         should_stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, EncodeReport]:
    """Features [N, D] for `paths` (rows of failed images are zero), computing only what the cache lacks."""
    missing = set(cache.missing(hashes))
    todo = [i for i, h in enumerate(hashes) if h in missing]
    # one computation per distinct hash
    first_of: dict[str, int] = {}
    for i in todo:
        first_of.setdefault(hashes[i], i)
    unique = list(first_of.values())
    failed_hashes: set[str] = set()
    if unique:
        loader = image_loader([paths[i] for i in unique], clip.preprocess, clip.image_size, batch_size)
        done = 0
        for pixels, ok in loader:
            if should_stop is not None and should_stop():
                raise InterruptedError("feature extraction cancelled")
            feats = clip.encode_images(pixels).numpy()
            batch_idx = unique[done:done + len(pixels)]
            ok = ok.numpy().astype(bool)
            good = [hashes[i] for i, k in zip(batch_idx, ok) if k]
            failed_hashes.update(hashes[i] for i, k in zip(batch_idx, ok) if not k)
            cache.put(good, feats[ok])
            done += len(pixels)
            if progress is not None:
                progress(done, len(unique))
    failed = [i for i, h in enumerate(hashes) if h in failed_hashes]
    good_rows = [i for i in range(len(hashes)) if hashes[i] not in failed_hashes]
    out = None
    if good_rows:
        got = cache.get([hashes[i] for i in good_rows])
        out = np.zeros((len(hashes), got.shape[1]), dtype=np.float32)
        out[good_rows] = got
    else:
        out = np.zeros((len(hashes), clip.embed_dim), dtype=np.float32)
    return out, EncodeReport(cached=len(hashes) - len(todo), computed=len(unique) - len(failed_hashes), failed=failed)
