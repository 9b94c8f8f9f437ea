"""Pseudo-label generation (DESIGN §3 steps 3-6), as batched array math on cached features.

Notation: f̄(x) normalised image features [N, D]; t_c text features [C, D]; g_{c,m} synthetic features; s the
CLIP logit scale. Everything here is pure numpy, so re-fusing 10k images × 102 classes takes milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def masked_softmax(logits: np.ndarray, class_mask: np.ndarray | None = None) -> np.ndarray:
    """Row softmax; classes outside `class_mask` get probability exactly 0 (TRZSL: softmax over unseen classes)."""
    logits = np.asarray(logits, dtype=np.float64)
    if class_mask is not None:
        logits = np.where(class_mask[None, :], logits, -np.inf)
    m = np.max(logits, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(logits - m)
    z = e.sum(axis=1, keepdims=True)
    return e / np.where(z > 0, z, 1.0)


def text_probs(image_feats: np.ndarray, text_feats: np.ndarray, scale: float,
               class_mask: np.ndarray | None = None) -> np.ndarray:
    """p(c|x) = softmax_c(s · f̄(x)·t_c)."""
    return masked_softmax(scale * (image_feats @ text_feats.T), class_mask)


def representative_scores(syn_feats: np.ndarray, syn_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """r_{c,m} = cos(g_{c,m}, μ_c) with μ_c = mean_m g_{c,m} over every sample of class c."""
    g = _normalise(np.asarray(syn_feats, dtype=np.float64))
    sums = np.zeros((n_classes, g.shape[1]))
    np.add.at(sums, syn_labels, g)
    mu = _normalise(sums)
    return np.einsum("nd,nd->n", g, mu[syn_labels])


def top_per_class(scores: np.ndarray, labels: np.ndarray, k: int, candidates: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask keeping, for every label, the k candidates with the highest score (stable on ties)."""
    n = len(scores)
    keep = np.zeros(n, dtype=bool)
    idx = np.arange(n) if candidates is None else np.flatnonzero(candidates)
    if len(idx) == 0 or k <= 0:
        return keep
    order = idx[np.lexsort((-scores[idx], labels[idx]))]  # by label, then score descending
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    counts = np.diff(np.r_[starts, len(lab)])
    rank = np.arange(len(lab)) - np.repeat(starts, counts)
    keep[order[rank < k]] = True
    return keep


def select_representatives(scores: np.ndarray, syn_labels: np.ndarray, k: int) -> np.ndarray:
    """S_c: the K samples of each class with the highest r_{c,m}."""
    return top_per_class(scores, syn_labels, k)


def prototypes(syn_feats: np.ndarray, syn_labels: np.ndarray, kept: np.ndarray, n_classes: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """ĝ_c = normalise(mean of the kept g_{c,k}). Returns ([C, D], has_prototype [C])."""
    d = syn_feats.shape[1] if syn_feats.ndim == 2 and syn_feats.shape[0] else 0
    sums = np.zeros((n_classes, d))
    counts = np.zeros(n_classes)
    if kept.any():
        np.add.at(sums, syn_labels[kept], _normalise(np.asarray(syn_feats[kept], dtype=np.float64)))
        np.add.at(counts, syn_labels[kept], 1)
    return _normalise(sums), counts > 0


def aux_probs(image_feats: np.ndarray, protos: np.ndarray, has_proto: np.ndarray, scale: float,
              class_mask: np.ndarray | None = None) -> np.ndarray:
    """p̂(c|x) = softmax_c(s · f̄(x)·ĝ_c) over classes that have a prototype (uniform if none has one)."""
    mask = has_proto if class_mask is None else (has_proto & class_mask)
    if not mask.any():
        allowed = np.ones(protos.shape[0], dtype=bool) if class_mask is None else class_mask
        return np.broadcast_to(allowed / allowed.sum(), (image_feats.shape[0], len(allowed))).copy()
    return masked_softmax(scale * (image_feats @ protos.T), mask)


def fuse(p: np.ndarray, p_hat: np.ndarray, lam: float) -> np.ndarray:
    """p*(c|x) = (p(c|x) + λ·p̂(c|x)) / (1 + λ)."""
    return (p + lam * p_hat) / (1.0 + lam)


@dataclass(frozen=True)
class Selection:
    selected: np.ndarray  # bool [N]
    labels: np.ndarray  # int [N], pseudo-label where selected, -1 elsewhere


def select_pseudolabels(probs: np.ndarray, candidates: np.ndarray, rule: str, k: int) -> Selection:
    """Pseudo-labels from fused probabilities.

    - ``topk`` (UPL): every candidate goes to its argmax class; the k most confident per class are kept; an image
      is used once, and a class with few argmax hits simply gets fewer.
    - ``all``: every candidate, labelled with its argmax.
    ``grip``/``fixed`` schedules call ``topk`` with their per-round budget.
    """
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    if rule == "all":
        selected = candidates.copy()
    else:
        selected = top_per_class(conf, pred, k, candidates)
    labels = np.where(selected, pred, -1)
    return Selection(selected, labels)


def grip_budget(round_index: int, n_unlabeled: int, n_pseudo_classes: int, step: float = 0.1) -> int:
    """k_i = floor(i·q / C'), q = floor(step·N_U), capped at floor(N_U / C') (GRIP's growing per-class budget)."""
    if n_pseudo_classes <= 0:
        return 0
    q = int(np.floor(step * n_unlabeled))
    return int(min((round_index * q) // n_pseudo_classes, n_unlabeled // n_pseudo_classes))
