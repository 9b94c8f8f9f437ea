"""Augmenting with synthetic images (DESIGN §3 steps 1-3): LoRA fine-tuning, per-class generation, and the choice
of representative samples. Each function is a stage: it takes a Context and can resume after a kill."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..models import diffusion as sd
from ..workspace import atomic_save_image, file_sha256, fingerprint
from .context import Context
from .features import encode_images_cached
from .pseudolabel import representative_scores, select_representatives, text_probs

LORA_FILE = sd.LORA_WEIGHTS


def lora_path(ctx: Context) -> Path:
    return ctx.ws.path("lora", LORA_FILE)


def lora_captions(ctx: Context, images) -> list[str]:
    """`domain`: one class-free caption for every image; `pseudo`: the first template filled with each image's
    zero-shot pseudo-label (the text classifier's argmax)."""
    if ctx.cfg.finetune.captions == "domain":
        return [ctx.domain_caption] * len(images)
    clip = ctx.clip()
    feats, _ = encode_images_cached(clip, [r.path for r in images], [r.sha for r in images],
                                    ctx.ws.feature_cache(clip.model_id))
    text = clip.text_classifier(ctx.classes, ctx.templates).numpy()
    pred = text_probs(feats, text, clip.logit_scale).argmax(1)
    template = ctx.templates[0]
    return [template.format(ctx.classes[c]) for c in pred]


def finetune(ctx: Context) -> Path | None:
    """Step 1: LoRA on the UNet attention (to_q, to_k, to_v, to_out.0) with the noise-prediction loss on the target
    images. Skipped when the saved LoRA already matches the images and settings."""
    f = ctx.cfg.finetune
    if not f.enabled:
        ctx.hooks.say("finetune: disabled (finetune.enabled: false); synthesis uses the base model")
        return None
    images = ctx.ws.images(split="train")
    if not images:
        raise UserError("no usable training images to fine-tune on")
    pipe = ctx.pipeline()
    resolution = f.resolution or sd.native_resolution(pipe)
    fp = fingerprint("finetune", ctx.models.diffusion, f.rank, f.alpha, f.lr, f.steps, f.batch_size, resolution,
                     f.captions, ctx.domain_caption if f.captions == "domain" else ctx.models.clip,
                     ctx.cfg.seed, sorted(r.sha for r in images))
    out = lora_path(ctx)
    if ctx.ws.stage_fingerprint("finetune") == fp and out.is_file():
        ctx.hooks.say(f"finetune: LoRA up to date ({out}), skipped")
        return out
    captions = lora_captions(ctx, images)
    from ..data.images import load_rgb

    pil = [load_rgb(r.path) for r in images]
    settings = sd.LoraSettings(rank=f.rank, alpha=f.alpha, lr=f.lr, steps=f.steps, batch_size=f.batch_size,
                               resolution=resolution, checkpoint_every=f.checkpoint_every, seed=ctx.cfg.seed)
    ckpt = ctx.ws.path("lora", "checkpoint", "state.json")
    ctx.hooks.say(f"finetune: LoRA rank {f.rank} on {len(pil)} images, {f.steps} steps at {resolution}px"
                  + (" (resuming from checkpoint)" if ckpt.is_file() else ""))
    ctx.ws.clear_stage("finetune")
    losses: list[float] = []

    def progress(done: int, total: int, loss: float) -> None:
        losses.append(loss)
        ctx.hooks.tick("finetune", done, total)

    path = sd.finetune_lora(pipe, pil, captions, settings, ctx.ws.path("lora"), progress, ctx.hooks.should_stop)
    ctx.ws.finish_stage("finetune", fp, {"steps": f.steps, "final_loss": losses[-1] if losses else None,
                                         "images": len(pil), "resolution": resolution})
    return path


def sample_seed(base_seed: int, class_idx: int, idx: int) -> int:
    """The recorded seed of sample m of class c: distinct per (run seed, class, index), stable across resumes."""
    return (base_seed * 1_000_003 + class_idx * 100_003 + idx) % (2**31 - 1)


def class_prompt(ctx: Context, class_idx: int) -> str:
    """prompt = template(class), or a user's custom prompt for that class (set from the UI)."""
    custom = (ctx.ws.meta("class_prompts") or {}).get(str(class_idx))
    return custom or ctx.templates[0].format(ctx.classes[class_idx])


def synthesize(ctx: Context, class_indices: list[int] | None = None) -> int:
    """Step 2: M images per class from the (LoRA-tuned) pipeline, one seeded generator per image, batched.

    Resumable: indices already in the workspace are skipped, so a killed run ends with exactly M per class.
    Returns how many images were generated now."""
    s, f = ctx.cfg.synthesis, ctx.cfg.finetune
    classes = ctx.classes
    targets = class_indices if class_indices is not None else list(range(len(classes)))
    lora_fp = ctx.ws.stage_fingerprint("finetune") if f.enabled else "none"
    if f.enabled and not (lora_path(ctx).is_file() and lora_fp):
        raise UserError("no fine-tuned LoRA in this workspace: run `finetune` first, or set finetune.enabled: false")
    recorded = ctx.ws.meta("synthesis_lora")
    if recorded is not None and recorded != lora_fp and ctx.ws.synthetic():
        ctx.hooks.say("synthesize: existing samples were made with a previous LoRA and are kept (with your keep/prune "
                      "decisions); run `synthesize --regenerate` to replace them")
    if not ctx.ws.synthetic():
        ctx.ws.set_meta("synthesis_lora", lora_fp)
    for stale in ctx.ws.path("synthetic").glob("*/.*.tmp"):  # half-written files of a killed run
        stale.unlink(missing_ok=True)
    todo: list[tuple[int, int]] = []
    for c in targets:
        have = {r.idx for r in ctx.ws.synthetic(c) if ctx.ws.path(r.path).is_file()}
        todo += [(c, m) for m in range(s.per_class) if m not in have]
    if not todo:
        ctx.hooks.say(f"synthesize: {s.per_class}/{s.per_class} samples per class present, nothing to generate")
        return 0
    pipe = ctx.pipeline()
    resolution = s.resolution or sd.native_resolution(pipe)
    ctx.hooks.say(f"synthesize: generating {len(todo)} images ({s.steps} steps, guidance {s.guidance}, {resolution}px)")
    if f.enabled:
        sd.load_lora(pipe, lora_path(ctx))
    made = 0
    try:
        for start in range(0, len(todo), s.batch_size):
            ctx.hooks.check_stop()
            batch = todo[start:start + s.batch_size]
            prompts = [class_prompt(ctx, c) for c, _ in batch]
            seeds = [sample_seed(ctx.cfg.seed, c, m) for c, m in batch]
            images = sd.generate(pipe, prompts, seeds, s.steps, s.guidance, resolution, s.negative_prompt,
                                 ctx.hooks.should_stop)
            for (c, m), prompt, seed, img in zip(batch, prompts, seeds, images):
                path = ctx.ws.synthetic_dir(c, classes[c]) / f"{m:05d}.png"
                atomic_save_image(path, img)
                ctx.ws.add_synthetic(c, m, seed, prompt, path, file_sha256(path))
            made += len(batch)
            ctx.hooks.tick("synthesize", made, len(todo))
    finally:
        if f.enabled:
            sd.unload_lora(pipe)
    return made


def synthetic_features(ctx: Context):
    """(records, features [M_total, D], labels [M_total]) of every synthetic sample, from the feature cache."""
    records = [r for r in ctx.ws.synthetic() if r.class_idx < len(ctx.classes)]
    clip = ctx.clip()
    feats, report = encode_images_cached(clip, [str(ctx.ws.path(r.path)) for r in records], [r.sha for r in records],
                                         ctx.ws.feature_cache(clip.model_id),
                                         progress=lambda d, t: ctx.hooks.tick("features (synthetic)", d, t),
                                         should_stop=ctx.hooks.should_stop)
    labels = np.array([r.class_idx for r in records], dtype=np.int64)
    return records, feats, labels, report


def select(ctx: Context) -> dict:
    """Step 3: r_{c,m} = cos(g_{c,m}, μ_c); keep the K highest per class. Manual keep/prune flags are left alone
    and override the automatic choice wherever they are set."""
    records, feats, labels, report = synthetic_features(ctx)
    if not records:
        raise UserError("no synthetic samples in this workspace: run `synthesize` first")
    k = ctx.cfg.keep_per_class
    scores = representative_scores(feats, labels, len(ctx.classes))
    keep = select_representatives(scores, labels, k)
    ctx.ws.set_synthetic_scores([(r.id, s, bool(kp)) for r, s, kp in zip(records, scores, keep)])
    kept = sum(r.kept for r in ctx.ws.synthetic())
    manual = sum(r.manual_keep is not None for r in records)
    ctx.hooks.say(f"select: kept {kept} of {len(records)} samples (K={k} per class, {manual} manual decisions); "
                  f"features {report.cached} cached, {report.computed} computed")
    return {"kept": kept, "total": len(records), "k": k, "manual": manual}

