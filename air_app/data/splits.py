"""Seeded paradigm splits (DESIGN §3): UL, SSL (n labeled per class) and TRZSL (62 % of classes seen).

All functions work on label arrays (-1 = unknown) and return index arrays, so they are cheap and testable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class ParadigmSplit:
    """Which training images are labeled, and (TRZSL) which classes are seen."""

    paradigm: str
    labeled: np.ndarray  # bool [N]: the image's ground truth is used as a label
    seen_classes: tuple[int, ...]  # TRZSL: seen classes; UL/SSL: empty

    def pseudo_classes(self, n_classes: int) -> list[int]:
        """The classes that receive pseudo-labels: all of them, or the unseen ones in TRZSL."""
        if self.paradigm == "trzsl":
            seen = set(self.seen_classes)
            return [c for c in range(n_classes) if c not in seen]
        return list(range(n_classes))


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded stratified holdout: bool mask [N] of test images, `fraction` of each class (at least one image of
    a class stays in training)."""
    test = np.zeros(len(labels), dtype=bool)
    if fraction <= 0:
        return test
    rng = np.random.default_rng(seed)
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        n_test = min(int(round(fraction * len(idx))), len(idx) - 1)
        if n_test > 0:
            test[rng.permutation(idx)[:n_test]] = True
    return test


def seen_unseen_classes(n_classes: int, seen_fraction: float, seed: int) -> tuple[int, ...]:
    """TRZSL: a seeded choice of int(seen_fraction·C) seen classes (at least 1, at most C − 1)."""
    if n_classes < 2:
        raise UserError("TRZSL needs at least 2 classes (some seen, some unseen)")
    n_seen = min(max(int(seen_fraction * n_classes), 1), n_classes - 1)
    rng = np.random.default_rng(seed)
    return tuple(sorted(int(c) for c in rng.permutation(n_classes)[:n_seen]))


def make_split(paradigm: str, labels: np.ndarray, n_classes: int, seed: int, labeled_per_class: int = 2,
               seen_fraction: float = 0.62) -> ParadigmSplit:
    """Split the training images of a paradigm. `labels` holds ground truth (-1 where unknown)."""
    labels = np.asarray(labels)
    if paradigm == "ul":
        return ParadigmSplit("ul", np.zeros(len(labels), dtype=bool), ())
    if (labels < 0).any():
        raise UserError(
            f"the {paradigm.upper()} paradigm needs labeled images, but the images are unlabeled (a flat folder): "
            "arrange them as an ImageFolder tree (<dir>/<class>/<image>) or use --paradigm ul")
    rng = np.random.default_rng(seed)
    labeled = np.zeros(len(labels), dtype=bool)
    if paradigm == "ssl":
        short = []
        for c in range(n_classes):
            idx = np.flatnonzero(labels == c)
            if len(idx) < labeled_per_class + 1:
                short.append(c)
                continue
            labeled[rng.permutation(idx)[:labeled_per_class]] = True
        if short:
            raise UserError(
                f"SSL with {labeled_per_class} labeled images per class needs more than {labeled_per_class} training "
                f"images in every class; {len(short)} class(es) have fewer (e.g. class index {short[0]}): lower "
                f"--labeled-per-class or add images")
        return ParadigmSplit("ssl", labeled, ())
    if paradigm == "trzsl":
        seen = seen_unseen_classes(n_classes, seen_fraction, seed)
        labeled = np.isin(labels, seen)
        if labeled.all():
            raise UserError("TRZSL left no unseen-class images to pseudo-label; add images of more classes")
        return ParadigmSplit("trzsl", labeled, seen)
    raise UserError(f"unknown paradigm {paradigm!r}; use ul, ssl or trzsl")
