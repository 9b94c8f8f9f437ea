"""Prompt learning on AiR pseudo-labels and synthetic images (DESIGN §3 steps 6-9), resumable and reproducible.

L = L_r + β·L_s. L_r per paradigm: UL CE_pseudo; SSL w·CE_labeled + CE_pseudo; TRZSL CE_seen + w·CE_unseen-pseudo
(logits over all classes). L_s = CE on the kept synthetic images with their generation class, one synthetic batch
per real batch. SGD (momentum, weight decay), linear warm-up then cosine, stepped per epoch (GRIP defaults).

Schedules: ``topk`` / ``all`` train once on the zero-shot fused pseudo-labels; ``fixed`` (IFPL) and ``grip`` run
rounds — prompts re-initialised each round, pseudo-labels refreshed by the newly trained prompts fused with the
auxiliary classifier (recomputed with the prompted image encoder for visual prompts); ``grip`` grows the per-class
budget by 10 % of the unlabeled pool each round.

Textual prompts leave the image encoder frozen and use no augmentation, so image features come from the feature
cache and an epoch only runs the text tower.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..workspace import atomic_write_bytes, atomic_write_text, fingerprint
from . import evaluate as ev
from .context import Context
from .labeling import LabelingData, LabelingResult
from .prompts import TextPrompt, VisualPrompt, save_prompt
from .pseudolabel import aux_probs, fuse, grip_budget, masked_softmax, prototypes, select_pseudolabels

PROMPT_FILE = "prompt.safetensors"
PIXEL_CACHE_BYTES = 2 << 30  # visual prompts keep preprocessed images in memory up to this size


def lr_factor(epoch: int, epochs: int, warmup: int) -> float:
    """Linear warm-up over `warmup` epochs (reaching the base lr at the end of warm-up), then cosine to 0."""
    warmup = min(warmup, max(epochs - 1, 0))
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    span = max(epochs - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / span))


# ------------------------------------------------------------------------------------------------ inputs
class ImageSource:
    """Model inputs for rows of real and synthetic images: cached features (textual) or pixels (visual)."""

    def __init__(self, ctx: Context, data: LabelingData, visual: bool):
        self.visual = visual
        self.clip = ctx.clip()
        self.real_paths = [r.path for r in data.images]
        self.syn_paths = [str(ctx.ws.path(r.path)) for r in data.syn_records]
        self.real_feats = torch.from_numpy(data.image_feats).float()
        self.syn_feats = torch.from_numpy(data.syn_feats).float() if len(data.syn_records) else None
        self._pixels: dict[str, torch.Tensor] = {}
        size = self.clip.image_size
        self._cache_pixels = (len(self.real_paths) + len(self.syn_paths)) * 3 * size * size * 4 <= PIXEL_CACHE_BYTES

    def _load(self, path: str) -> torch.Tensor:
        from ..data.images import load_rgb

        px = self._pixels.get(path)
        if px is None:
            px = self.clip.preprocess(load_rgb(path))
            if self._cache_pixels:
                self._pixels[path] = px
        return px

    def pixels(self, paths: list[str]) -> torch.Tensor:
        return torch.stack([self._load(p) for p in paths]).to(self.clip.device, self.clip.dtype)

    def batch(self, kind: str, idx: np.ndarray):
        if self.visual:
            paths = self.real_paths if kind == "real" else self.syn_paths
            return self.pixels([paths[i] for i in idx])
        feats = self.real_feats if kind == "real" else self.syn_feats
        return feats[torch.from_numpy(idx)].to(self.clip.device)


@dataclass
class TrainingSet:
    """Real rows (labeled or pseudo-labelled) and synthetic rows, as indices into LabelingData."""

    real_idx: np.ndarray
    real_labels: np.ndarray
    real_is_pseudo: np.ndarray
    syn_idx: np.ndarray
    syn_labels: np.ndarray

    @property
    def n_labeled(self) -> int:
        return int((~self.real_is_pseudo).sum())

    @property
    def n_pseudo(self) -> int:
        return int(self.real_is_pseudo.sum())


def training_set(data: LabelingData, pseudo: np.ndarray, selected: np.ndarray, kept: np.ndarray) -> TrainingSet:
    labeled = np.flatnonzero(data.is_train & data.labeled)
    chosen = np.flatnonzero(selected)
    real_idx = np.concatenate([labeled, chosen]).astype(np.int64)
    real_labels = np.concatenate([data.gt[labeled], pseudo[chosen]]).astype(np.int64)
    is_pseudo = np.concatenate([np.zeros(len(labeled), bool), np.ones(len(chosen), bool)])
    syn = np.flatnonzero(kept)
    return TrainingSet(real_idx, real_labels, is_pseudo, syn, data.syn_labels[syn].astype(np.int64))


# ------------------------------------------------------------------------------------------------- model
class PromptedClassifier:
    """The classifier being trained: logits s·f̄(x)·t_c with either learned text context or visual prompts."""

    def __init__(self, ctx: Context, data: LabelingData, prompt_type: str, n_ctx: int, seed: int):
        self.clip = ctx.clip()
        self.scale = self.clip.logit_scale
        self.prompt_type = prompt_type
        if prompt_type == "textual":
            self.module = TextPrompt(self.clip, data.classes, n_ctx=n_ctx, seed=seed)
            self.text_feats = None
        else:
            self.module = VisualPrompt(self.clip, n_tokens=n_ctx, seed=seed)
            self.text_feats = torch.from_numpy(data.text_feats).float().to(self.clip.device)

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.prompt_type == "textual":
            return self.scale * inputs.float() @ self.module().t()
        return self.scale * self.module.encode(inputs) @ self.text_feats.t()

    def class_features(self) -> torch.Tensor:
        """t_c used at test time: learned (textual) or the frozen template ensemble (visual)."""
        if self.prompt_type == "textual":
            return self.module()
        return self.text_feats

    @torch.no_grad()
    def image_features(self, source: ImageSource, kind: str, n: int, batch: int = 64) -> np.ndarray:
        """f̄(x) for all rows of `kind` with the current image encoder (prompted for visual prompts)."""
        if self.prompt_type == "textual":
            feats = source.real_feats if kind == "real" else source.syn_feats
            return feats.numpy().astype(np.float64)
        out = [self.module.encode(source.batch(kind, np.arange(i, min(i + batch, n)))).cpu()
               for i in range(0, n, batch)]
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, self.clip.embed_dim))


# -------------------------------------------------------------------------------------------- checkpoints
@dataclass
class Checkpoint:
    """Where a training run stands: round, epochs done in that round, its pseudo-labels, history."""

    fingerprint: str
    round: int = 0
    epoch: int = 0
    pseudo: list[int] = field(default_factory=list)
    selected: list[int] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


def _ckpt_dir(ctx: Context) -> Path:
    return ctx.ws.path("prompts", "checkpoint")


def save_checkpoint(ctx: Context, ck: Checkpoint, model: PromptedClassifier, opt: torch.optim.Optimizer) -> None:
    from safetensors.torch import save

    tensors = {f"prompt.{k}": v.detach().float().cpu().contiguous() for k, v in model.module.state_dict().items()}
    for i, p in enumerate(opt.param_groups[0]["params"]):
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{i}"] = buf.detach().float().cpu().contiguous()
    d = _ckpt_dir(ctx)
    atomic_write_bytes(d / "state.safetensors", save(tensors))
    atomic_write_text(d / "state.json", json.dumps(ck.__dict__))  # last: the checkpoint counts once this exists


def load_checkpoint(ctx: Context, fp: str) -> tuple[Checkpoint, dict] | None:
    from safetensors.torch import load_file

    d = _ckpt_dir(ctx)
    if not (d / "state.json").is_file():
        return None
    state = json.loads((d / "state.json").read_text())
    if state.get("fingerprint") != fp:
        if not ctx.cfg.train.resume:
            return None
        raise UserError("the workspace holds an unfinished training run with a different configuration (prompt "
                        "type, epochs, schedule, data or seed); rerun with that configuration to resume it, or pass "
                        "--fresh to discard it")
    return Checkpoint(**state), load_file(str(d / "state.safetensors"))


def clear_checkpoint(ctx: Context) -> None:
    d = _ckpt_dir(ctx)
    for f in d.glob("*"):
        f.unlink()
    if d.exists():
        d.rmdir()


# ----------------------------------------------------------------------------------------------- training
def _paradigm_weights(paradigm: str, n_labeled: int, n_pseudo: int, w: float | None) -> tuple[float, float]:
    """(weight of CE_labeled, weight of CE_pseudo)."""
    if paradigm == "ssl":
        return (w if w is not None else (n_pseudo / n_labeled if n_labeled else 1.0)), 1.0
    if paradigm == "trzsl":
        return 1.0, (w if w is not None else (n_labeled / n_pseudo if n_pseudo else 1.0))
    return 1.0, 1.0


def _epoch_order(seed: int, rnd: int, epoch: int, n: int, salt: int) -> np.ndarray:
    return np.random.default_rng([seed, rnd, epoch, salt]).permutation(n)


def train_round(ctx: Context, data: LabelingData, source: ImageSource, ts: TrainingSet, rnd: int, ck: Checkpoint,
                resume_tensors: dict | None, on_epoch: Callable[[dict], None]) -> PromptedClassifier:
    t = ctx.cfg.train
    seed = ctx.cfg.seed
    model = PromptedClassifier(ctx, data, t.prompt, t.n_ctx, seed=seed * 7919 + rnd)
    params = list(model.module.parameters())
    opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if resume_tensors is not None:
        model.module.load_state_dict({k[len("prompt."):]: v.to(params[0].device) for k, v in resume_tensors.items()
                                      if k.startswith("prompt.")})
        for i, p in enumerate(params):
            if f"momentum.{i}" in resume_tensors:
                opt.state[p]["momentum_buffer"] = resume_tensors[f"momentum.{i}"].to(p.device, p.dtype)
    w_l, w_p = _paradigm_weights(data.paradigm, ts.n_labeled, ts.n_pseudo, t.paradigm_weight)
    n_real, n_syn = len(ts.real_idx), len(ts.syn_idx)
    use_syn = t.beta > 0 and n_syn > 0
    test = np.flatnonzero(~data.is_train & (data.gt >= 0))
    for epoch in range(ck.epoch, t.epochs):
        ctx.hooks.check_stop()
        for g in opt.param_groups:
            g["lr"] = t.lr * lr_factor(epoch, t.epochs, t.warmup_epochs)
        order = _epoch_order(seed, rnd, epoch, n_real, 0)
        syn_order = _epoch_order(seed, rnd, epoch, n_syn, 1) if use_syn else None
        losses, correct, seen = [], 0, 0
        t0 = time.perf_counter()
        for step, start in enumerate(range(0, n_real, t.batch_size)):
            rows = order[start:start + t.batch_size]
            labels = torch.from_numpy(ts.real_labels[rows]).to(model.clip.device)
            is_pseudo = torch.from_numpy(ts.real_is_pseudo[rows]).to(model.clip.device)
            logits = model.logits(source.batch("real", ts.real_idx[rows]))
            ce = F.cross_entropy(logits, labels, reduction="none")
            loss = logits.new_zeros(())
            if (~is_pseudo).any():
                loss = loss + w_l * ce[~is_pseudo].mean()
            if is_pseudo.any():
                loss = loss + w_p * ce[is_pseudo].mean()
            if use_syn:
                srows = syn_order[(step * t.batch_size + np.arange(t.batch_size)) % n_syn]
                syn_logits = model.logits(source.batch("syn", ts.syn_idx[srows]))
                syn_labels = torch.from_numpy(ts.syn_labels[srows]).to(model.clip.device)
                loss = loss + t.beta * F.cross_entropy(syn_logits, syn_labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(rows)
        record = {"round": rnd, "epoch": epoch + 1, "loss": float(np.mean(losses)), "train_acc": correct / max(seen, 1),
                  "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 3)}
        if t.prompt == "textual" and len(test):
            with torch.no_grad():
                pred = model.logits(source.batch("real", test)).argmax(1).cpu().numpy()
            record["test_acc"] = float((pred == data.gt[test]).mean())
        ck.epoch = epoch + 1
        ck.history.append(record)
        save_checkpoint(ctx, ck, model, opt)
        on_epoch(record)
    return model


def refresh_pseudolabels(ctx: Context, data: LabelingData, source: ImageSource, model: PromptedClassifier | None,
                         base: LabelingResult, rnd: int) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-labels for round `rnd`: zero-shot fused ones in round 0, else the trained prompts' text classifier fused
    with the auxiliary classifier (whose prototypes use the prompted image encoder for visual prompts)."""
    p_cfg = ctx.cfg.pseudolabel
    rule = p_cfg.rule
    n_classes = len(data.classes)
    candidates = data.candidates
    pseudo_classes = int(data.class_mask.sum()) if data.class_mask is not None else n_classes
    if rule == "grip":  # at least one per class, so a small pool still has pseudo-labels in round 1
        k = max(1, grip_budget(rnd + 1, int(candidates.sum()), pseudo_classes, p_cfg.grip_step))
    else:
        k = p_cfg.k_per_class
    if model is None:
        fused_probs = base.fused
    else:
        with torch.no_grad():
            t_feats = model.class_features().cpu().numpy().astype(np.float64)
        img = model.image_features(source, "real", len(data.images))
        p = masked_softmax(model.scale * img @ t_feats.T, data.class_mask)
        if model.prompt_type == "visual" and len(data.syn_records):
            syn = model.image_features(source, "syn", len(data.syn_records))
            protos, has = prototypes(syn, data.syn_labels, data.kept, n_classes)
        else:
            protos, has = base.protos, base.has_proto
        fused_probs = fuse(p, aux_probs(img, protos, has, model.scale, data.class_mask), p_cfg.lam)
    sel = select_pseudolabels(fused_probs, candidates, "all" if rule == "all" else "topk", k)
    return sel.labels, sel.selected


def n_rounds(rule: str, cfg_rounds: int) -> int:
    return cfg_rounds if rule in ("grip", "fixed") else 1


def train_prompts(ctx: Context, result: LabelingResult) -> tuple[PromptedClassifier, list[dict]]:
    """Train prompts through every round of the schedule, resuming from a checkpoint when one matches."""
    t, p = ctx.cfg.train, ctx.cfg.pseudolabel
    if t.prompt == "none":
        raise UserError("no prompt type: pass --prompt textual or --prompt visual")
    data = result.data
    if data.paradigm == "trzsl" and len(data.classes) < 2:
        raise UserError("TRZSL needs at least 2 classes")
    source = ImageSource(ctx, data, visual=t.prompt == "visual")
    rounds = n_rounds(p.rule, p.grip_rounds)
    fp = fingerprint("train", t.prompt, t.n_ctx, t.epochs, t.lr, t.momentum, t.weight_decay, t.batch_size,
                     t.warmup_epochs, t.beta, t.paradigm_weight, p.rule, p.k_per_class, p.lam, p.grip_rounds,
                     p.grip_step, ctx.cfg.seed, ctx.models.clip, [r.sha for r in data.images],
                     [r.id for r, k in zip(data.syn_records, data.kept) if k], data.labeled.tolist())
    loaded = load_checkpoint(ctx, fp)
    if loaded is None:
        clear_checkpoint(ctx)
        ck, tensors = Checkpoint(fp), None
    else:
        ck, tensors = loaded
        ctx.hooks.say(f"train: resuming round {ck.round + 1}/{rounds} at epoch {ck.epoch}/{t.epochs}")
    total = rounds * t.epochs
    model = None

    def on_epoch(record: dict) -> None:
        done = record["round"] * t.epochs + record["epoch"]
        ctx.hooks.tick("train", done, total)
        if ctx.hooks.on_epoch is not None:
            ctx.hooks.on_epoch(record)

    for rnd in range(ck.round, rounds):
        if rnd != ck.round or not ck.pseudo:
            pseudo, selected = refresh_pseudolabels(ctx, data, source, model, result, rnd)
            ck.round, ck.epoch, ck.pseudo, ck.selected = rnd, 0, pseudo.tolist(), np.flatnonzero(selected).tolist()
            tensors = None
        pseudo = np.array(ck.pseudo, dtype=np.int64)
        selected = np.zeros(len(data.images), dtype=bool)
        selected[np.array(ck.selected, dtype=np.int64)] = True
        ts = training_set(data, pseudo, selected, data.kept)
        if len(ts.real_idx) == 0:
            raise UserError("no pseudo-labelled or labeled training images: raise --k-per-class or add images")
        ctx.hooks.say(f"train: round {rnd + 1}/{rounds}: {ts.n_labeled} labeled, {ts.n_pseudo} pseudo-labelled, "
                      f"{len(ts.syn_idx)} synthetic images; {t.prompt} prompt, {t.epochs} epochs")
        model = train_round(ctx, data, source, ts, rnd, ck, tensors, on_epoch)
        tensors = None
    assert model is not None
    return model, ck.history


def evaluate_prompts(ctx: Context, data: LabelingData, model: PromptedClassifier) -> dict:
    """Top-1 test accuracy with the prompted text classifier, per-class accuracy, confusion matrix; TRZSL seen,
    unseen and harmonic mean."""
    source = ImageSource(ctx, data, visual=model.prompt_type == "visual")
    test = np.flatnonzero(~data.is_train)
    if not len(test):
        return {"accuracy": None, "note": "no test images (give --test-images or a labeled folder)"}
    with torch.no_grad():
        t_feats = model.class_features().cpu().numpy().astype(np.float64)
    if model.prompt_type == "textual":
        img = data.image_feats[test]
    else:
        img = model.image_features(source, "real", len(data.images))[test]
    pred = (img @ t_feats.T).argmax(1)
    gt = data.gt[test]
    out: dict = {"accuracy": ev.accuracy(pred, gt), "per_class": dict(zip(data.classes, ev.per_class_accuracy(
        pred, gt, len(data.classes)))), "test_images": int(len(test))}
    zs = (data.image_feats[test] @ data.text_feats.T).argmax(1)
    out["zero_shot_accuracy"] = ev.accuracy(zs, gt)
    if data.paradigm == "trzsl":
        seen = set(ctx.ws.seen_classes())
        is_seen = np.array([g in seen for g in gt])
        known = gt >= 0
        s_acc = ev.accuracy(pred[is_seen & known], gt[is_seen & known])
        u_acc = ev.accuracy(pred[~is_seen & known], gt[~is_seen & known])
        out.update(seen_accuracy=s_acc, unseen_accuracy=u_acc, harmonic_mean=ev.harmonic_mean(s_acc, u_acc))
        zs_s = ev.accuracy(zs[is_seen & known], gt[is_seen & known])
        zs_u = ev.accuracy(zs[~is_seen & known], gt[~is_seen & known])
        out["zero_shot_harmonic_mean"] = ev.harmonic_mean(zs_s, zs_u)
    if (gt >= 0).any():
        ev.write_confusion(ctx.ws.path("report", "confusion_final.png"), gt, pred, data.classes,
                           f"trained {model.prompt_type} prompt (test)")
    preds_path = ctx.ws.path("report", "test_predictions.csv")
    rows = [f"{data.images[i].path},{'' if g < 0 else data.classes[g]},{data.classes[p]}" for i, g, p in
            zip(test, gt, pred)]
    atomic_write_text(preds_path, "path,gt,prediction\n" + "\n".join(rows) + "\n")
    return out


def train_and_evaluate(ctx: Context, result: LabelingResult) -> dict:
    """The `train` stage: prompts, checkpoints, export (safetensors + manifest), metrics and runs.jsonl."""
    t0 = time.perf_counter()
    model, history = train_prompts(ctx, result)
    final = evaluate_prompts(ctx, result.data, model)
    final.update(prompt=ctx.cfg.train.prompt, rule=ctx.cfg.pseudolabel.rule, epochs=ctx.cfg.train.epochs)
    manifest = {"classes": result.data.classes, "clip_model": ctx.models.clip, "clip_model_id": model.clip.model_id, "templates": ctx.templates,
                "paradigm": result.data.paradigm, "seed": ctx.cfg.seed, "test_accuracy": final.get("accuracy")}
    save_prompt(model.module, ctx.ws.path("prompts", PROMPT_FILE), manifest)
    atomic_write_text(ctx.ws.path("prompts", "history.json"), json.dumps(history, indent=1))
    clear_checkpoint(ctx)
    metrics = ev.update_metrics(ctx.ws.path("report", "metrics.json"), {"final": final, "history": history})
    run = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "workspace": str(ctx.ws.root), "config": ctx.cfg.to_dict(),
           "versions": ev.versions(), "seed": ctx.cfg.seed, "paradigm": result.data.paradigm,
           "preset": ctx.cfg.data.preset, "zero_shot_accuracy": final.get("zero_shot_accuracy"),
           "pseudolabel_accuracy": metrics.get("pseudolabel_accuracy"), "final": {k: v for k, v in final.items()
                                                                                 if k != "per_class"},
           "seconds": round(time.perf_counter() - t0, 2), "models": ctx.ws.meta("models")}
    path = ctx.ws.path("report", "runs.jsonl")
    previous = path.read_text(encoding="utf-8") if path.is_file() else ""
    atomic_write_text(path, previous + json.dumps(run, default=str) + "\n")
    acc = final.get("accuracy")
    msg = f"train: {ctx.cfg.train.prompt} prompt test accuracy {'n/a' if acc is None else f'{acc:.1%}'}"
    if final.get("zero_shot_accuracy") is not None:
        msg += f" (zero-shot {final['zero_shot_accuracy']:.1%})"
    if final.get("harmonic_mean") is not None:
        msg += f", seen {final['seen_accuracy']:.1%} / unseen {final['unseen_accuracy']:.1%} / H {final['harmonic_mean']:.1%}"
    ctx.hooks.say(msg)
    return final
