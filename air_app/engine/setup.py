"""The `init` stage: create or open a workspace and index the task — classes, templates, images, paradigm split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import AirConfig
from ..data.classes import match_folders
from ..data.images import ImageScan, scan_images
from ..data.splits import holdout_split, make_split
from ..errors import UserError
from ..workspace import Workspace, file_sha256, fingerprint
from .context import Hooks, resolve_task


def _preset_folders(cfg: AirConfig) -> tuple[str | None, str | None]:
    """With a preset and --data-root: `<root>/<preset>/train` and `/test` (as written by `download`)."""
    d = cfg.data
    if not (d.preset and d.data_root):
        return d.images, d.test_images
    base = Path(d.data_root).expanduser() / d.preset.lower()
    train, test = base / "train", base / "test"
    if not train.is_dir():
        raise UserError(f"{train} does not exist: run `python -m air_app download {d.preset} --data-root "
                        f"{d.data_root}` or arrange the images as <root>/{d.preset.lower()}/train/<class>/...")
    return d.images or str(train), d.test_images or (str(test) if test.is_dir() else None)


def _labels(scan: ImageScan, classes: list[str]) -> list[int | None]:
    if not scan.labeled:
        return [None] * len(scan.items)
    mapping = match_folders(scan.folder_labels, classes)
    return [mapping[label] for _, label in scan.items]


def init_workspace(cfg: AirConfig, hooks: Hooks | None = None) -> Workspace:
    """Index classes and images into the workspace at cfg.workspace; unchanged inputs are a no-op.

    Ground truth comes from ImageFolder sub-folders; a flat folder is unlabeled. Test images come from
    data.test_images, else a seeded stratified holdout of data.test_fraction when ground truth exists."""
    hooks = hooks or Hooks()
    if not cfg.workspace:
        raise UserError("no workspace: pass --workspace DIR")
    classes, templates, caption = resolve_task(cfg)
    images_dir, test_dir = _preset_folders(cfg)
    if not images_dir:
        raise UserError("no images: pass --images DIR (an ImageFolder tree <dir>/<class>/* or a flat folder)")
    scan = scan_images(images_dir, "images")
    test_scan = scan_images(test_dir, "test images") if test_dir else None
    gt = _labels(scan, classes)
    test_gt = _labels(test_scan, classes) if test_scan else []
    d = cfg.data
    split_seed = cfg.effective_split_seed
    labels = np.array([-1 if g is None else g for g in gt])
    if test_scan is None and scan.labeled and d.test_fraction > 0:
        is_test = holdout_split(labels, d.test_fraction, split_seed)
    else:
        is_test = np.zeros(len(labels), dtype=bool)
    train_idx = np.flatnonzero(~is_test)
    split = make_split(d.paradigm, labels[train_idx], len(classes), split_seed, d.labeled_per_class, d.seen_fraction)
    ws = Workspace.create(cfg.workspace)
    hashes = [file_sha256(p) for p, _ in scan.items]
    test_hashes = [file_sha256(p) for p, _ in test_scan.items] if test_scan else []
    fp = fingerprint("init", classes, templates, caption, d.paradigm, d.labeled_per_class, d.seen_fraction,
                     d.test_fraction, split_seed, [str(p) for p, _ in scan.items], hashes, gt,
                     [str(p) for p, _ in test_scan.items] if test_scan else [], test_hashes, test_gt)
    if ws.stage_fingerprint("init") == fp:
        hooks.say(f"init: workspace {ws.root} already indexes these {len(hashes) + len(test_hashes)} images, skipped")
        return ws
    ws.set_classes(classes, seen=split.seen_classes)
    labeled = np.zeros(len(labels), dtype=bool)
    labeled[train_idx] = split.labeled
    rows = [(str(p), h, g, "test" if t else "train", bool(lb))
            for (p, _), h, g, t, lb in zip(scan.items, hashes, gt, is_test, labeled)]
    if test_scan:
        rows += [(str(p), h, g, "test", False) for (p, _), h, g in zip(test_scan.items, test_hashes, test_gt)]
    seen_paths: set[str] = set()
    unique_rows = []
    for row in rows:  # the same file given twice (train and test folders overlap) is indexed once
        if row[0] not in seen_paths:
            seen_paths.add(row[0])
            unique_rows.append(row)
    ws.replace_images(unique_rows)
    ws.set_meta("templates", templates)
    ws.set_meta("domain_caption", caption)
    ws.set_meta("paradigm", d.paradigm)
    ws.set_meta("config", cfg.to_dict())
    skipped = scan.skipped + (test_scan.skipped if test_scan else [])
    ws.set_meta("skipped_files", [[str(p), r] for p, r in skipped])
    ws.finish_stage("init", fp, {"images": len(unique_rows), "skipped": len(skipped)})
    n_train = sum(1 for r in unique_rows if r[3] == "train")
    hooks.say(f"init: {len(classes)} classes, {n_train} training and {len(unique_rows) - n_train} test images "
              f"({'labeled' if scan.labeled else 'unlabeled'} folder), paradigm {d.paradigm.upper()}"
              + (f", {len(split.seen_classes)} seen classes" if split.seen_classes else "")
              + (f", {int(labeled.sum())} labeled" if labeled.any() else ""))
    if skipped:
        hooks.say(f"init: skipped {len(skipped)} files: " + "; ".join(f"{p} ({r})" for p, r in skipped[:10])
                  + (" ..." if len(skipped) > 10 else ""))
    return ws
