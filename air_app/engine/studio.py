"""The engine seen from the web app: one :class:`Studio` per open workspace, shared by every UI session.

It wraps the stage functions with what an interactive user needs — cached features so λ and K re-fuse in
milliseconds, per-class sample listings, manual keep/prune, regeneration with a custom prompt, disagreement lists
and Grad-CAM for one image — and holds no UI code itself.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import load_config
from ..errors import UserError
from ..workspace import Workspace, atomic_write_bytes
from . import evaluate as ev
from . import pipeline, synth
from .context import Context, Hooks
from .labeling import LabelingData, LabelingResult, load_labeling_data
from .pseudolabel import representative_scores, top_per_class
from .setup import init_workspace


@dataclass
class Sample:
    id: int
    class_idx: int
    path: str
    score: float | None
    kept: bool
    manual: bool | None
    seed: int
    prompt: str


class Studio:
    """An open workspace for the UI. Thread-safe; cheap to call repeatedly."""

    def __init__(self, root: str | Path, overrides: dict[str, Any] | None = None):
        self.root = str(Path(root).expanduser().resolve())
        self._lock = threading.RLock()
        self._overrides = dict(overrides or {})
        self._ctx: Context | None = None
        self._data: LabelingData | None = None

    # ---- context and cached data
    def context(self, hooks: Hooks | None = None, overrides: dict[str, Any] | None = None) -> Context:
        with self._lock:
            merged = {**self._overrides, **(overrides or {})}
            ctx = pipeline.open_context(self.root, overrides=merged, hooks=hooks or Hooks(say=lambda m: None))
            if hooks is None and not overrides:
                self._ctx = ctx
            return ctx

    @property
    def ctx(self) -> Context:
        return self._ctx or self.context()

    def invalidate(self) -> None:
        """Forget cached features-derived data (after generation, selection or a new setup)."""
        with self._lock:
            self._data = None
            self._ctx = None

    def labeling_data(self) -> LabelingData:
        with self._lock:
            if self._data is None:
                self._data = load_labeling_data(self.ctx)
            return self._data

    # ---- status
    def status(self) -> dict:
        ws = self.ctx.ws
        classes = ws.classes()
        samples = ws.synthetic()
        per_class = {c: {"total": 0, "kept": 0, "pruned": 0} for c in range(len(classes))}
        for s in samples:
            if s.class_idx in per_class:
                row = per_class[s.class_idx]
                row["total"] += 1
                row["kept" if s.kept else "pruned"] += 1
        images = ws.images()
        models = ws.meta("models") or {}
        return {
            "workspace": self.root, "classes": classes, "paradigm": ws.meta("paradigm", "ul"),
            "templates": ws.meta("templates") or [], "train_images": sum(r.split == "train" for r in images),
            "test_images": sum(r.split == "test" for r in images), "labeled": sum(r.labeled for r in images),
            "has_ground_truth": any(r.gt is not None for r in images),
            "seen_classes": [classes[i] for i in ws.seen_classes()], "per_class": per_class,
            "synthetic": len(samples), "kept": sum(s.kept for s in samples),
            "finetuned": bool(ws.stage_fingerprint("finetune")) and ws.path("lora", synth.LORA_FILE).is_file(),
            "models": models, "is_tiny": bool(models.get("is_tiny")),
            "skipped_files": ws.meta("skipped_files") or [],
            "trained": ws.path("prompts", "prompt.safetensors").is_file(),
            "config": self.ctx.cfg.to_dict(),
        }

    # ---- synthetic samples
    def samples(self, class_idx: int | None = None) -> list[Sample]:
        ws = self.ctx.ws
        return [Sample(r.id, r.class_idx, str(ws.path(r.path)), r.score, r.kept, r.manual_keep, r.seed, r.prompt)
                for r in ws.synthetic(class_idx)]

    def set_keep(self, sample_id: int, keep: bool | None) -> None:
        with self._lock:
            self.ctx.ws.set_manual_keep([sample_id], keep)
            if self._data is not None:
                self._data.set_kept(sample_id, keep)

    def toggle(self, sample_id: int) -> bool:
        """Prune a kept sample or restore a pruned one; the decision persists in the workspace. Returns kept."""
        current = next((s for s in self.samples() if s.id == sample_id), None)
        if current is None:
            raise UserError(f"sample {sample_id} no longer exists; refresh the gallery")
        self.set_keep(sample_id, not current.kept)
        return not current.kept

    def keep_most_representative(self, k: int, class_idx: int | None = None) -> int:
        """Keep exactly the K highest-scoring samples (r = cos(g, μ_c)) of one class or of every class, as manual
        decisions that persist. Returns how many samples are kept now in the affected classes."""
        if k <= 0:
            raise UserError("K must be a positive integer")
        ctx = self.ctx
        records, feats, labels, _ = synth.synthetic_features(ctx)
        if not records:
            raise UserError("no synthetic samples yet: generate some first")
        scores = representative_scores(feats, labels, len(ctx.classes))
        keep = top_per_class(scores, labels, k)
        affected = [i for i, r in enumerate(records) if class_idx is None or r.class_idx == class_idx]
        ws = ctx.ws
        ws.set_synthetic_scores([(records[i].id, scores[i], bool(keep[i])) for i in affected])
        ws.set_manual_keep([records[i].id for i in affected if keep[i]], True)
        ws.set_manual_keep([records[i].id for i in affected if not keep[i]], False)
        self.invalidate()
        return int(keep[affected].sum())

    # ---- long stages (run by the UI's job runner, one at a time)
    def finetune(self, hooks: Hooks, overrides: dict[str, Any] | None = None) -> str:
        ctx = self.context(hooks, overrides)
        path = synth.finetune(ctx)
        return f"LoRA ready: {path}" if path else "fine-tuning disabled"

    def synthesize(self, hooks: Hooks, overrides: dict[str, Any] | None = None, class_idx: int | None = None,
                   prompt: str | None = None) -> str:
        ctx = self.context(hooks, overrides)
        if class_idx is not None and prompt is not None:
            prompt = prompt.strip()
            if prompt:
                prompts = dict(ctx.ws.meta("class_prompts") or {})
                prompts[str(class_idx)] = prompt
                ctx.ws.set_meta("class_prompts", prompts)
            ctx.ws.delete_synthetic(class_idx)
        made = synth.synthesize(ctx, [class_idx] if class_idx is not None else None)
        synth.select(ctx)
        self.invalidate()
        return f"generated {made} images; representatives selected"

    def train(self, hooks: Hooks, overrides: dict[str, Any] | None = None) -> dict:
        ctx = self.context(hooks, overrides)
        ctx.ws.set_meta("config", ctx.cfg.to_dict())
        return pipeline.train(ctx)

    # ---- pseudo-labels
    def fuse(self, lam: float, k: int, rule: str = "topk") -> LabelingResult:
        if lam < 0:
            raise UserError("λ must be >= 0")
        if k <= 0:
            raise UserError("K must be a positive integer")
        return self.labeling_data().fuse(float(lam), rule, int(k))

    def save_pseudolabel_settings(self, lam: float, k: int, rule: str) -> None:
        """Remember λ, K and the rule in the workspace config, so training and the CLI use what the user chose."""
        ws = self.ctx.ws
        cfg = dict(ws.meta("config") or {})
        section = dict(cfg.get("pseudolabel") or {})
        if (section.get("lam"), section.get("k_per_class"), section.get("rule")) != (lam, k, rule):
            section.update(lam=lam, k_per_class=k, rule=rule)
            cfg["pseudolabel"] = section
            ws.set_meta("config", cfg)
            self._ctx = None

    def summary(self, result: LabelingResult) -> dict:
        acc = result.accuracies()
        d = result.data
        return {**acc, "selected": int(result.selected.sum()), "candidates": int(d.candidates.sum()),
                "has_ground_truth": bool((d.gt[d.candidates] >= 0).any()), "lam": result.lam, "k": result.k}

    def confusion_images(self, result: LabelingResult) -> dict[str, bytes | None]:
        d = result.data
        cand = d.candidates
        gt = d.gt[cand]
        if not (gt >= 0).any():
            return {"text": None, "aux": None, "fused": None}
        return {n: ev.confusion_png(gt, getattr(result, n)[cand].argmax(1), d.classes, f"{n} classifier")
                for n in ("text", "aux", "fused")}

    def disagreements(self, result: LabelingResult, limit: int = 48) -> list[dict]:
        """Candidate images where the text and auxiliary classifiers disagree, most confident disagreements first."""
        d = result.data
        idx = np.flatnonzero(d.candidates)
        tp, ap = result.text[idx].argmax(1), result.aux[idx].argmax(1)
        dis = idx[tp != ap]
        strength = result.text[dis].max(1) + result.aux[dis].max(1)
        out = []
        for i in dis[np.argsort(-strength)][:limit]:
            r = d.images[i]
            out.append({"row": int(i), "path": r.path, "gt": d.classes[r.gt] if r.gt is not None else None,
                        "text": d.classes[int(result.text[i].argmax())], "aux": d.classes[int(result.aux[i].argmax())],
                        "fused": d.classes[int(result.fused[i].argmax())]})
        return out

    def image_rows(self) -> list[dict]:
        d = self.labeling_data()
        return [{"row": i, "path": r.path, "split": r.split, "gt": d.classes[r.gt] if r.gt is not None else None}
                for i, r in enumerate(d.images)]

    def inspect(self, row: int, lam: float, k: int, target_class: str | None = None):
        """Top-5 of each classifier and Grad-CAM overlays (text, aux, fused) for real image `row`."""
        from .explain import explain_image

        d = self.labeling_data()
        if not 0 <= row < len(d.images):
            raise UserError(f"image row {row} does not exist (0..{len(d.images) - 1})")
        result = d.fuse(float(lam), "topk", int(k))
        cls = d.classes.index(target_class) if target_class in d.classes else None
        return explain_image(self.ctx.clip(), d.images[row].path, d.text_feats, result.protos, result.has_proto,
                             result.lam, d.classes, d.class_mask, cls)

    def write_pseudolabel_report(self, result: LabelingResult) -> None:
        from .labeling import write_reports

        write_reports(self.ctx, result)

    # ---- results
    def results(self) -> dict:
        ws = self.ctx.ws
        metrics = ev.read_json(ws.path("report", "metrics.json"))
        runs = []
        path = ws.path("report", "runs.jsonl")
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    runs.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        files = [p for p in (ws.path("prompts", "prompt.safetensors"), ws.path("prompts", "prompt.safetensors.json"),
                             ws.path("report", "predictions.csv")) if p.is_file()]
        return {"metrics": metrics, "runs": runs, "files": [str(p) for p in files]}

    def report_zip(self) -> str:
        """The whole report/ folder plus the learned prompt, as one zip in the workspace."""
        ws = self.ctx.ws
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for folder in ("report", "prompts"):
                for p in sorted(ws.path(folder).rglob("*")):
                    if p.is_file() and "checkpoint" not in p.parts and not p.name.startswith("."):
                        z.write(p, p.relative_to(ws.root))
        return str(atomic_write_bytes(ws.path("downloads", "air_report.zip"), buf.getvalue()))


_STUDIOS: dict[str, Studio] = {}
_STUDIOS_LOCK = threading.Lock()


def get_studio(root: str | Path) -> Studio:
    """The shared Studio of an existing workspace."""
    key = str(Path(root).expanduser().resolve())
    with _STUDIOS_LOCK:
        studio = _STUDIOS.get(key)
        # Full check (clear error when it is not a workspace) only the first time: Workspace.open writes a probe
        # file named after the process id, so concurrent opens of one workspace from UI threads raced on it
        # ("cannot write to workspace ...: No such file or directory"); later calls just check it still exists.
        if studio is None or not (Path(key) / "workspace.db").is_file():
            Workspace.open(key).close()
            studio = _STUDIOS.setdefault(key, Studio(key))
        return studio


def setup_workspace(root: str | Path, *, classes: list[str], templates: list[str] | None, images: str,
                    paradigm: str = "ul", labeled_per_class: int = 2, seen_fraction: float = 0.62,
                    models: str = "auto", preset: str | None = None, test_fraction: float = 0.2,
                    domain_caption: str | None = None, hooks: Hooks | None = None) -> Studio:
    """Create or update a workspace from the Setup tab's fields (same rules as `init`)."""
    overrides: dict[str, Any] = {
        "workspace": str(root), "data.classes": classes, "data.images": images, "data.paradigm": paradigm,
        "data.labeled_per_class": labeled_per_class, "data.seen_fraction": seen_fraction, "models.mode": models,
        "data.test_fraction": test_fraction,
    }
    if templates:
        overrides["data.templates"] = templates
    if preset:
        overrides["data.preset"] = preset
    if domain_caption:
        overrides["data.domain_caption"] = domain_caption
    existing = Path(root) / "workspace.db"
    if existing.is_file():  # keep the stage settings already chosen for this workspace
        opened = Workspace.open(root)
        try:
            stored = opened.meta("config") or {}
        finally:
            opened.close()
        for section in ("finetune", "synthesis", "pseudolabel", "train"):
            for key, value in (stored.get(section) or {}).items():
                overrides.setdefault(f"{section}.{key}", value)
    cfg = load_config(None, overrides)
    init_workspace(cfg, hooks)
    studio = get_studio(root)
    studio.invalidate()
    studio.context()  # records which models are in use
    return studio


def read_predictions(root: str | Path) -> list[dict]:
    path = Path(root) / "report" / "predictions.csv"
    if not path.is_file():
        return []
    return list(csv.DictReader(open(path, encoding="utf-8")))
