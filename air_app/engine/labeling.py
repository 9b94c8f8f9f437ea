"""The pseudo-label stage: load cached features once, then fuse and select in milliseconds.

:class:`LabelingData` holds f̄(x) of every real image, t_c, and g_{c,m} with their keep flags; :meth:`LabelingData.fuse`
turns (λ, rule, K) into a :class:`LabelingResult`. The UI keeps one LabelingData per workspace and re-fuses on every
slider move; the CLI stage writes the report files from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..workspace import ImageRecord, SyntheticRecord
from . import evaluate as ev
from .context import Context
from .features import encode_images_cached
from .pseudolabel import aux_probs, fuse, prototypes, select_pseudolabels, text_probs


@dataclass
class LabelingData:
    classes: list[str]
    images: list[ImageRecord]  # usable real images, train then test
    image_feats: np.ndarray  # [N, D]
    gt: np.ndarray  # [N], -1 unknown
    is_train: np.ndarray  # bool [N]
    labeled: np.ndarray  # bool [N], ground truth used as a label (SSL / TRZSL seen)
    text_feats: np.ndarray  # [C, D]
    syn_records: list[SyntheticRecord]
    syn_feats: np.ndarray  # [M_total, D]
    syn_labels: np.ndarray  # [M_total]
    scale: float  # s
    class_mask: np.ndarray | None  # bool [C]: classes that get pseudo-labels (TRZSL unseen), None = all
    paradigm: str
    _text_probs: np.ndarray | None = field(default=None, repr=False)
    _aux_cache: tuple[bytes, tuple] | None = field(default=None, repr=False)

    @property
    def candidates(self) -> np.ndarray:
        """Images that receive pseudo-labels: unlabeled training images (of unseen classes in TRZSL)."""
        return self.is_train & ~self.labeled

    @property
    def kept(self) -> np.ndarray:
        return np.array([r.kept for r in self.syn_records], dtype=bool)

    def text(self) -> np.ndarray:
        if self._text_probs is None:
            self._text_probs = text_probs(self.image_feats, self.text_feats, self.scale, self.class_mask)
        return self._text_probs

    def set_kept(self, sample_id: int, keep: bool | None) -> None:
        """Reflect a manual keep/prune in memory (the workspace is updated separately)."""
        self.syn_records = [SyntheticRecord(**{**r.__dict__, "manual_keep": keep}) if r.id == sample_id else r
                            for r in self.syn_records]

    def fuse(self, lam: float, rule: str = "topk", k: int = 16, kept: np.ndarray | None = None) -> "LabelingResult":
        kept = self.kept if kept is None else kept
        key = np.packbits(kept).tobytes() + len(kept).to_bytes(8, "little")
        if self._aux_cache is None or self._aux_cache[0] != key:  # prototypes change only when samples do
            protos, has = prototypes(self.syn_feats, self.syn_labels, kept, len(self.classes))
            self._aux_cache = (key, (protos, has, aux_probs(self.image_feats, protos, has, self.scale,
                                                            self.class_mask)))
        protos, has, p_hat = self._aux_cache[1]
        p = self.text()
        p_star = fuse(p, p_hat, lam)
        sel = select_pseudolabels(p_star, self.candidates, "topk" if rule in ("grip", "fixed") else rule, k)
        return LabelingResult(self, lam, rule, k, p, p_hat, p_star, sel.selected, sel.labels, protos, has)


@dataclass
class LabelingResult:
    data: LabelingData
    lam: float
    rule: str
    k: int
    text: np.ndarray  # p
    aux: np.ndarray  # p̂
    fused: np.ndarray  # p*
    selected: np.ndarray  # bool [N]
    pseudo: np.ndarray  # int [N], -1 where not selected
    protos: np.ndarray  # ĝ_c
    has_proto: np.ndarray

    def accuracies(self) -> dict:
        """Pseudo-label accuracy of text / aux / fused over the candidate images with ground truth (the paper's
        Fig. 4), the accuracy of the selected pseudo-labels, and agreement rates (always available)."""
        d = self.data
        cand = d.candidates
        gt = d.gt[cand]
        preds = {name: getattr(self, name)[cand].argmax(1) for name in ("text", "aux", "fused")}
        sel = self.selected[cand]
        return {
            "pseudolabel_accuracy": {n: ev.accuracy(p, gt) for n, p in preds.items()},
            "selected_accuracy": ev.accuracy(self.pseudo[self.selected], d.gt[self.selected]) if sel.any() else None,
            "agreement": {
                "text_aux": float((preds["text"] == preds["aux"]).mean()) if cand.any() else None,
                "text_fused": float((preds["text"] == preds["fused"]).mean()) if cand.any() else None,
                "aux_fused": float((preds["aux"] == preds["fused"]).mean()) if cand.any() else None,
            },
        }

    def per_class(self) -> list[dict]:
        """Per class: text/aux disagreement rate among candidates predicted as the class, selected count, and
        per-classifier accuracy where ground truth exists."""
        d = self.data
        cand = d.candidates
        tp, ap, fp = (getattr(self, n)[cand].argmax(1) for n in ("text", "aux", "fused"))
        gt = d.gt[cand]
        out = []
        for c, name in enumerate(d.classes):
            either = (tp == c) | (ap == c)
            rows = gt == c
            out.append({
                "class": name, "selected": int((self.pseudo == c).sum()),
                "text_votes": int((tp == c).sum()), "aux_votes": int((ap == c).sum()),
                "disagreement": float((tp[either] != ap[either]).mean()) if either.any() else 0.0,
                "text_acc": float((tp[rows] == c).mean()) if rows.any() else None,
                "aux_acc": float((ap[rows] == c).mean()) if rows.any() else None,
                "fused_acc": float((fp[rows] == c).mean()) if rows.any() else None,
            })
        return out


def load_labeling_data(ctx: Context) -> LabelingData:
    """Features of every usable real image and synthetic sample (computed only where the cache lacks them)."""
    from .synth import synthetic_features

    ws, classes = ctx.ws, ctx.classes
    clip = ctx.clip()
    images = ws.images(split="train") + ws.images(split="test")
    if not images:
        raise UserError("this workspace has no real images: run `init` with --images")
    cache = ws.feature_cache(clip.model_id)
    feats, report = encode_images_cached(clip, [r.path for r in images], [r.sha for r in images], cache,
                                         progress=lambda d, t: ctx.hooks.tick("features (real)", d, t),
                                         should_stop=ctx.hooks.should_stop)
    if report.failed:
        bad = [images[i] for i in report.failed]
        ws.mark_unusable([r.id for r in bad], "could not be decoded")
        ctx.hooks.say(f"features: skipped {len(bad)} undecodable images: {', '.join(r.path for r in bad[:3])}")
        keep = [i for i in range(len(images)) if i not in set(report.failed)]
        images = [images[i] for i in keep]
        feats = feats[keep]
        if not images:
            raise UserError("none of the workspace's images could be decoded")
    ctx.hooks.say(f"features: {report.cached} real images cached, {report.computed} computed")
    text = clip.text_classifier(classes, ctx.templates).numpy()
    syn_records, syn_feats, syn_labels, syn_report = synthetic_features(ctx)
    if syn_report.computed:
        ctx.hooks.say(f"features: {syn_report.computed} synthetic samples computed")
    seen = ws.seen_classes()
    paradigm = ws.meta("paradigm", "ul")
    mask = None
    if paradigm == "trzsl":
        mask = np.ones(len(classes), dtype=bool)
        mask[seen] = False
    return LabelingData(
        classes=classes, images=images, image_feats=feats.astype(np.float64),
        gt=np.array([-1 if r.gt is None else r.gt for r in images], dtype=np.int64),
        is_train=np.array([r.split == "train" for r in images]), labeled=np.array([r.labeled for r in images]),
        text_feats=text.astype(np.float64), syn_records=syn_records,
        syn_feats=syn_feats.astype(np.float64) if len(syn_records) else np.zeros((0, text.shape[1])),
        syn_labels=syn_labels, scale=clip.logit_scale, class_mask=mask, paradigm=paradigm)


def write_reports(ctx: Context, result: LabelingResult) -> dict:
    """metrics.json (pseudo-label section), predictions.csv, probs.npz and confusion_{text,aux,fused}.png."""
    d = result.data
    report = ctx.ws.path("report")
    classes = d.classes
    ev.write_probs(report / "probs.npz", result.text, result.aux, result.fused, classes, result.lam)
    rows = []
    for i, r in enumerate(d.images):
        rows.append({
            "path": r.path, "split": r.split, "labeled": int(r.labeled),
            "gt": classes[r.gt] if r.gt is not None else "",
            **{f"{n}_pred": classes[int(getattr(result, n)[i].argmax())] for n in ("text", "aux", "fused")},
            **{f"{n}_conf": f"{float(getattr(result, n)[i].max()):.6f}" for n in ("text", "aux", "fused")},
            "selected": int(result.selected[i]),
            "pseudo_label": classes[result.pseudo[i]] if result.selected[i] else "",
        })
    ev.write_predictions(report / "predictions.csv", rows)
    cand = d.candidates
    gt = d.gt[cand]
    if (gt >= 0).any():
        for n in ("text", "aux", "fused"):
            ev.write_confusion(report / f"confusion_{n}.png", gt, getattr(result, n)[cand].argmax(1), classes,
                               f"{n} classifier (pseudo-label candidates)")
    acc = result.accuracies()
    counts = {
        "classes": len(classes), "images": len(d.images), "train": int(d.is_train.sum()),
        "test": int((~d.is_train).sum()), "labeled": int(d.labeled.sum()), "unlabeled": int(cand.sum()),
        "selected": int(result.selected.sum()), "synthetic": len(d.syn_records), "synthetic_kept": int(d.kept.sum()),
        "classes_without_kept_synthetic": [classes[c] for c in np.flatnonzero(~result.has_proto)],
    }
    test = ~d.is_train
    zero_shot = ev.accuracy(result.text[test].argmax(1), d.gt[test]) if test.any() else None
    metrics = ev.update_metrics(report / "metrics.json", {
        "paradigm": d.paradigm, "lam": result.lam, "rule": result.rule, "k_per_class": result.k,
        "counts": counts, **acc, "seed": ctx.cfg.seed,
        "zero_shot_accuracy": zero_shot, "models": ctx.ws.meta("models"),
    })
    return metrics


def pseudolabel(ctx: Context) -> LabelingResult:
    """Steps 4-6 as a stage: aux classifier, fusion, selection, and the report files."""
    p = ctx.cfg.pseudolabel
    data = load_labeling_data(ctx)
    if not data.syn_records:
        ctx.hooks.say("pseudolabel: no synthetic samples; the auxiliary classifier is uniform (p* ranks like p)")
    result = data.fuse(p.lam, p.rule, p.k_per_class)
    metrics = write_reports(ctx, result)
    acc = metrics["pseudolabel_accuracy"]
    fmt = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
    ctx.hooks.say(f"pseudolabel: λ={p.lam}, rule={p.rule}, K={p.k_per_class}: selected {int(result.selected.sum())} "
                  f"of {int(data.candidates.sum())}; accuracy text {fmt(acc['text'])}, aux {fmt(acc['aux'])}, "
                  f"fused {fmt(acc['fused'])}")
    return result
