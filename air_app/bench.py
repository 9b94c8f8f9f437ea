"""`python -m air_app bench pseudolabel|train`: speed figures measured in one run, reported as ratios.

Benchmarks, not tests: they print numbers and targets, and exit 0 either way. Architectures are real-size
(ViT-B-32) with random weights, which gives true speed on any machine without a model hub.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _vit(arch: str):
    """A ClipModel of `arch` with random weights (saved and loaded through the real file path)."""
    import open_clip
    from safetensors.torch import save_file

    from .models.clip import load_clip

    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    tmp = Path(tempfile.mkdtemp(prefix="air-bench-"))
    path = tmp / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    del model
    return load_clip(f"{arch}:{path}", torch.device("cuda" if torch.cuda.is_available() else "cpu")), tmp


def bench_pseudolabel(n_images: int, n_classes: int, arch: str, sample: int = 64) -> dict:
    from PIL import Image

    from .engine.features import encode_images_cached
    from .engine.labeling import LabelingData
    from .workspace import FeatureCache, SyntheticRecord

    rng = np.random.default_rng(0)
    d, m = 512, 32

    def unit(*shape):
        x = rng.standard_normal(shape)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    syn_labels = np.repeat(np.arange(n_classes), m)
    records = [SyntheticRecord(i, int(c), i, i, "", "", "", 0.0, bool(i % m < m // 2), None)
               for i, c in enumerate(syn_labels)]
    data = LabelingData(
        classes=[f"class {c}" for c in range(n_classes)], images=[], image_feats=unit(n_images, d),
        gt=rng.integers(0, n_classes, n_images), is_train=np.ones(n_images, bool), labeled=np.zeros(n_images, bool),
        text_feats=unit(n_classes, d), syn_records=records, syn_feats=unit(len(syn_labels), d),
        syn_labels=syn_labels, scale=100.0, class_mask=None, paradigm="ul")
    data.fuse(1.0)  # caches p, as the UI does after loading a workspace
    lams = iter(np.linspace(0, 2, 1000))
    t_lambda = _best_of(lambda: data.fuse(float(next(lams)), "topk", 16))
    kept = data.kept.copy()

    def prune_and_refuse():
        kept[rng.integers(len(kept))] ^= True
        data.fuse(1.0, "topk", 16, kept=kept)

    t_prune = _best_of(prune_and_refuse)

    clip, tmp = _vit(arch)
    paths = []
    for i in range(sample):
        arr = rng.integers(0, 255, (256, 320, 3), dtype=np.uint8)
        p = tmp / f"img{i:04d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(str(p))
    hashes = [f"h{i}" for i in range(sample)]
    clip.encode_images(torch.zeros(2, 3, clip.image_size, clip.image_size))  # warm-up

    def data_path():
        cache = FeatureCache(Path(tempfile.mkdtemp(dir=tmp)), f"bench-{time.time_ns()}")
        encode_images_cached(clip, paths, hashes, cache, batch_size=32)

    from .data.images import load_rgb

    pixels = torch.stack([clip.preprocess(load_rgb(p)) for p in paths])

    def raw_forward():
        for i in range(0, sample, 32):
            clip.encode_images(pixels[i:i + 32])

    t_data = _best_of(data_path, 2)
    t_raw = _best_of(raw_forward, 2)
    per_image = t_data / sample
    recompute_all = per_image * n_images
    return {
        "images": n_images, "classes": n_classes, "arch": arch,
        "refuse_lambda_ms": t_lambda * 1e3, "refuse_after_prune_ms": t_prune * 1e3,
        "encode_per_image_ms": per_image * 1e3, "recompute_features_s": recompute_all,
        "speedup_vs_recompute": recompute_all / t_prune,
        "data_path_img_s": sample / t_data, "raw_forward_img_s": sample / t_raw,
        "data_path_ratio": t_raw / t_data,
    }


def main(what: str, args) -> int:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if what == "pseudolabel":
        r = bench_pseudolabel(args.images_n, args.classes_n, args.arch)
        print(f"pseudo-label re-fusion from cached features, {r['images']:,} images x {r['classes']} classes:")
        print(f"  move λ (fuse + select):            {r['refuse_lambda_ms']:8.1f} ms   (target < 50 ms)")
        print(f"  prune a sample (prototypes + aux): {r['refuse_after_prune_ms']:8.1f} ms   (target < 50 ms)")
        print(f"  recomputing the features instead:  {r['recompute_features_s']:8.1f} s    "
              f"({r['encode_per_image_ms']:.1f} ms/image, {r['arch']})")
        print(f"  speed-up of re-fusion:             {r['speedup_vs_recompute']:8.0f} x   (target >= 100 x)")
        print(f"feature extraction, {r['arch']}: real data path {r['data_path_img_s']:.1f} img/s vs raw forward "
              f"{r['raw_forward_img_s']:.1f} img/s -> ratio {r['data_path_ratio']:.2f} (target >= 0.8)")
        return 0
    r = bench_train(args.arch)
    print(f"textual prompt training, {r['arch']}, {r['classes']} classes, {r['images']} images, batch {r['batch']}:")
    print(f"  with the feature cache:      {r['cached_s']:8.2f} s/epoch")
    print(f"  re-encoding images per step: {r['uncached_s']:8.2f} s/epoch")
    print(f"  speed-up: {r['speedup']:.1f} x   (target >= 10 x)")
    print(f"  peak memory: {r['peak_rss_mb']:.0f} MB RSS" + (f", {r['peak_cuda_mb']:.0f} MB CUDA" if r['peak_cuda_mb'] else ""))
    return 0


def bench_train(arch: str, n_classes: int = 10, n_images: int = 64, batch: int = 16) -> dict:
    """Seconds per epoch of CoOp training: text tower only (cached image features) vs encoding images every step."""
    import resource

    import torch.nn.functional as F

    from .engine.prompts import TextPrompt

    clip, _ = _vit(arch)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(n_images, 3, clip.image_size, clip.image_size, generator=g)
    labels = torch.randint(0, n_classes, (n_images,), generator=g)
    feats = torch.cat([clip.encode_images(pixels[i:i + 32]) for i in range(0, n_images, 32)])
    prompt = TextPrompt(clip, [f"class number {i}" for i in range(n_classes)], n_ctx=16, seed=0)
    opt = torch.optim.SGD(prompt.parameters(), lr=0.1, momentum=0.9)

    def epoch(cached: bool):
        for i in range(0, n_images, batch):
            x = feats[i:i + batch] if cached else clip.encode_images(pixels[i:i + batch].to(clip.device, clip.dtype))
            loss = F.cross_entropy(clip.logit_scale * x.to(clip.device) @ prompt().t(), labels[i:i + batch].to(clip.device))
            opt.zero_grad()
            loss.backward()
            opt.step()

    epoch(True)  # warm-up
    cached = _best_of(lambda: epoch(True), 2)
    uncached = _best_of(lambda: epoch(False), 2)
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    return {"arch": arch, "classes": n_classes, "images": n_images, "batch": batch, "cached_s": cached,
            "uncached_s": uncached, "speedup": uncached / cached,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_cuda_mb": cuda}
