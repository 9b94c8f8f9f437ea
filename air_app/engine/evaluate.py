"""Evaluation and report files (DESIGN §4, §3 step 9): accuracies, confusion matrices as PNG, and the
`metrics.json` / `predictions.csv` / `probs.npz` writers. Every file is written atomically."""

from __future__ import annotations

import csv
import io
import json
import platform
from pathlib import Path
from typing import Sequence

import numpy as np

from ..workspace import atomic_write_bytes, atomic_write_text


def accuracy(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """Top-1 accuracy over rows with known ground truth (gt >= 0); None when there are none."""
    known = gt >= 0
    if not known.any():
        return None
    return float((pred[known] == gt[known]).mean())


def per_class_accuracy(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> list[float | None]:
    out: list[float | None] = []
    for c in range(n_classes):
        rows = gt == c
        out.append(float((pred[rows] == c).mean()) if rows.any() else None)
    return out


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    """H = 2ab / (a + b) (TRZSL: seen and unseen accuracy); 0 when both are 0."""
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def confusion(gt: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """C×C counts over rows with ground truth; every class has a row and a column, even if never predicted."""
    gt = np.asarray(gt, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    # rows without ground truth are ignored (sklearn's confusion_matrix raises when none are left)
    known = (gt >= 0) & (gt < n_classes) & (pred >= 0) & (pred < n_classes)
    flat = gt[known] * n_classes + pred[known]
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def confusion_png(gt: np.ndarray, pred: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    """A row-normalised confusion matrix figure as PNG bytes (thread-safe OO matplotlib, no pyplot)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(classes)
    cm = confusion(gt, pred, n).astype(np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    cm_norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = min(max(4.0, 0.28 * n + 2.5), 30.0)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    labels = [c if len(c) <= 24 else c[:23] + "…" for c in classes]
    disp = ConfusionMatrixDisplay(cm_norm, display_labels=labels)
    disp.plot(ax=ax, include_values=n <= 15, values_format=".2f", xticks_rotation="vertical", colorbar=n <= 40,
              cmap="Blues", im_kw={"vmin": 0.0, "vmax": 1.0})
    known = gt >= 0
    acc = float((pred[known] == gt[known]).mean()) if known.any() else float("nan")
    ax.set_title(f"{title}\naccuracy {acc:.1%} (n={int(known.sum())})", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def write_confusion(path: Path, gt: np.ndarray, pred: np.ndarray, classes: Sequence[str], title: str) -> Path:
    return atomic_write_bytes(path, confusion_png(gt, pred, classes, title))


def write_probs(path: Path, text: np.ndarray, aux: np.ndarray, fused: np.ndarray, classes: Sequence[str],
                lam: float) -> Path:
    """probs.npz: `text`, `aux`, `fused` (N×C), `classes` (unicode), `lam` (scalar); loads with allow_pickle=False."""
    buf = io.BytesIO()
    np.savez(buf, text=text.astype(np.float64), aux=aux.astype(np.float64), fused=fused.astype(np.float64),
             classes=np.array(list(classes), dtype=np.str_), lam=np.float64(lam))
    return atomic_write_bytes(path, buf.getvalue())


PREDICTION_COLUMNS = ["path", "split", "labeled", "gt", "text_pred", "text_conf", "aux_pred", "aux_conf",
                      "fused_pred", "fused_conf", "selected", "pseudo_label"]


def write_predictions(path: Path, rows: list[dict]) -> Path:
    """predictions.csv, one row per real image, in the row order of probs.npz. Class columns hold names."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PREDICTION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def update_metrics(path: Path, updates: dict) -> dict:
    """Merge `updates` into metrics.json (sections are replaced whole) and write it atomically."""
    metrics = read_json(path)
    metrics.update(updates)
    metrics["versions"] = versions()
    atomic_write_text(path, json.dumps(metrics, indent=2, sort_keys=True, default=_json_default))
    return metrics


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("air-app", "torch", "open_clip_torch", "diffusers", "transformers", "peft"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    from .. import __version__

    out["air_app"] = __version__
    return out
