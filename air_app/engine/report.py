"""Human-readable output of the `evaluate` and `explain` commands (text tables and overlay files)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..workspace import atomic_save_image
from . import evaluate as ev
from .context import Context
from .explain import Explanation, explain_image
from .labeling import LabelingResult, load_labeling_data


def _fmt(v) -> str:
    return "   n/a" if v is None else f"{v:6.1%}"


def print_evaluation(ctx: Context) -> LabelingResult:
    """Recompute the pseudo-label metrics from cached features, refresh the report, print a per-class table."""
    from .labeling import write_reports

    p = ctx.cfg.pseudolabel
    result = load_labeling_data(ctx).fuse(p.lam, p.rule, p.k_per_class)
    metrics = write_reports(ctx, result)
    acc = metrics["pseudolabel_accuracy"]
    print(f"paradigm {metrics['paradigm'].upper()}, λ={p.lam}, rule {p.rule}, K={p.k_per_class}")
    print(f"zero-shot test accuracy: {_fmt(metrics.get('zero_shot_accuracy'))}")
    print(f"pseudo-label accuracy  text {_fmt(acc['text'])}  aux {_fmt(acc['aux'])}  fused {_fmt(acc['fused'])}  "
          f"selected {_fmt(metrics.get('selected_accuracy'))}")
    final = metrics.get("final")
    if final:
        print(f"trained prompts ({final.get('prompt')}): test accuracy {_fmt(final.get('accuracy'))}")
    print(f"{'class':32s} {'text':>6s} {'aux':>6s} {'fused':>6s} {'selected':>8s} {'text≠aux':>8s}")
    for row in result.per_class():
        print(f"{row['class'][:32]:32s} {_fmt(row['text_acc'])} {_fmt(row['aux_acc'])} {_fmt(row['fused_acc'])} "
              f"{row['selected']:8d} {row['disagreement']:8.1%}")
    print(f"report: {ctx.ws.path('report')}")
    return result


def resolve_image(ctx: Context, image: str) -> str:
    """An image path, or a row number of report/predictions.csv (0-based)."""
    if image.isdigit():
        rows = list(csv.DictReader(open(ctx.ws.path("report", "predictions.csv"), encoding="utf-8"))) \
            if ctx.ws.path("report", "predictions.csv").is_file() else []
        if not rows:
            raise UserError("no predictions.csv yet: run `pseudolabel` first, or pass an image path")
        i = int(image)
        if i >= len(rows):
            raise UserError(f"row {i} is past the end of predictions.csv ({len(rows)} rows)")
        return rows[i]["path"]
    path = Path(image).expanduser()
    if not path.is_file():
        raise UserError(f"image {path} does not exist")
    return str(path.resolve())


def explain(ctx: Context, image: str, target_class: str | None = None) -> Explanation:
    """Grad-CAM for one image with the workspace's text classifier, prototypes and λ."""
    data = load_labeling_data(ctx)
    result = data.fuse(ctx.cfg.pseudolabel.lam, ctx.cfg.pseudolabel.rule, ctx.cfg.pseudolabel.k_per_class)
    cls = None
    if target_class is not None:
        if target_class not in data.classes:
            raise UserError(f"unknown class {target_class!r}")
        cls = data.classes.index(target_class)
    try:
        from ..data.images import load_rgb

        load_rgb(image)
    except Exception:
        raise UserError(f"{image} is not a readable image") from None
    return explain_image(ctx.clip(), image, data.text_feats, result.protos, result.has_proto, result.lam,
                         data.classes, data.class_mask, cls)


def explain_to_files(ctx: Context, image: str, target_class: str | None, out: str | None) -> Path:
    path = resolve_image(ctx, image)
    exp = explain(ctx, path, target_class)
    out_dir = Path(out) if out else ctx.ws.path("report", "explain")
    stem = Path(path).stem
    atomic_save_image(out_dir / f"{stem}_input.png", Image.fromarray((exp.image * 255).astype(np.uint8)))
    for name, overlay in exp.overlays.items():
        atomic_save_image(out_dir / f"{stem}_cam_{name}.png", Image.fromarray(overlay))
    classes = ctx.classes
    for name in ("text", "aux", "fused"):
        top = ", ".join(f"{c} {p:.1%}" for c, p in exp.top5[name])
        print(f"{name:5s} explains '{classes[exp.classes[name]]}': top-5 {top}")
    print(f"overlays: {out_dir}/{stem}_cam_{{text,aux,fused}}.png")
    return out_dir
