"""Grad-CAM on the CLIP image tower for three targets: the text embedding t_c of a class, the auxiliary prototype
ĝ_c of a class, and the fused score p*(c|x). Shows where in the image each classifier looks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import load_rgb


class _ImageEmbedder(torch.nn.Module):
    """grad-cam calls model(x): return the CLIP image embedding f(x) [B, D]."""

    def __init__(self, clip_model):
        super().__init__()
        self.clip_model = clip_model

    def forward(self, x):
        return self.clip_model.encode_image(x)


class CosineTarget:
    """Score = cos(f(x), e) for a fixed embedding e (t_c or ĝ_c)."""

    def __init__(self, emb: torch.Tensor):
        self.emb = F.normalize(emb.flatten().float(), dim=0)

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(out.flatten().float(), self.emb.to(out.device), dim=0)


class FusedTarget:
    """Score = p*(c|x) = (softmax(s f̄·T)_c + λ softmax(s f̄·G)_c) / (1 + λ), over the allowed classes."""

    def __init__(self, text: torch.Tensor, protos: torch.Tensor, has_proto: torch.Tensor, scale: float, lam: float,
                 c: int, class_mask: torch.Tensor | None):
        self.text, self.protos, self.scale, self.lam, self.c = text.float(), protos.float(), scale, lam, c
        allowed = torch.ones(text.shape[0], dtype=torch.bool) if class_mask is None else class_mask
        self.text_mask = allowed
        self.aux_mask = allowed & has_proto

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        f = F.normalize(out.flatten().float(), dim=0)
        neg = torch.tensor(float("-inf"), device=f.device)
        p = torch.softmax(torch.where(self.text_mask.to(f.device), self.scale * (self.text.to(f.device) @ f), neg), 0)
        if self.aux_mask.any():
            q = torch.softmax(torch.where(self.aux_mask.to(f.device), self.scale * (self.protos.to(f.device) @ f), neg), 0)
        else:
            q = torch.full_like(p, 1.0 / p.numel())
        return (p[self.c] + self.lam * q[self.c]) / (1 + self.lam)


@dataclass
class Explanation:
    image: np.ndarray  # HxWx3 float32 in [0,1], the preprocessed view the model saw
    overlays: dict[str, np.ndarray]  # {"text", "aux", "fused"} -> uint8 HxWx3 overlay
    heatmaps: dict[str, np.ndarray]  # raw CAMs in [0,1]
    classes: dict[str, int]  # the class explained by each target
    top5: dict[str, list[tuple[str, float]]]  # each classifier's top-5 (name, probability)


def explain_image(clip, image_path: str, text_feats: np.ndarray, protos: np.ndarray, has_proto: np.ndarray,
                  lam: float, class_names: list[str], class_mask: np.ndarray | None = None,
                  target_class: int | None = None) -> Explanation:
    """Three Grad-CAMs for one image. Without `target_class`, each target explains its own classifier's prediction."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image

    from .pseudolabel import aux_probs, fuse, text_probs

    pixels = clip.preprocess(load_rgb(image_path)).unsqueeze(0)
    feats = clip.encode_images(pixels).numpy().astype(np.float64)
    p = text_probs(feats, text_feats, clip.logit_scale, class_mask)[0]
    q = aux_probs(feats, protos, has_proto, clip.logit_scale, class_mask)[0]
    fused = fuse(p, q, lam)
    probs = {"text": p, "aux": q, "fused": fused}
    chosen = {k: int(v.argmax()) if target_class is None else int(target_class) for k, v in probs.items()}
    top5 = {k: [(class_names[i], float(v[i])) for i in np.argsort(-v)[:5]] for k, v in probs.items()}
    t_text = torch.from_numpy(text_feats).float()
    t_protos = torch.from_numpy(protos).float()
    mask_t = None if class_mask is None else torch.from_numpy(class_mask)
    targets = {
        "text": CosineTarget(t_text[chosen["text"]]),
        "aux": CosineTarget(t_protos[chosen["aux"]]),
        "fused": FusedTarget(t_text, t_protos, torch.from_numpy(has_proto), clip.logit_scale, lam, chosen["fused"],
                             mask_t),
    }
    visual = clip.model.visual
    gh, gw = visual.grid_size
    layer = visual.transformer.resblocks[-1].ln_1  # the last block's output only feeds CLS: use its input norm

    def reshape(t):
        return t[:, 1:1 + gh * gw, :].reshape(t.size(0), gh, gw, t.size(2)).permute(0, 3, 1, 2).float()

    x = pixels.to(clip.device, clip.dtype).requires_grad_(True)  # frozen weights: grads flow from the input
    heat: dict[str, np.ndarray] = {}
    rgb = clip.image_to_numpy(pixels[0])
    with clip.lock, torch.enable_grad(), GradCAM(model=_ImageEmbedder(clip.model), target_layers=[layer],
                                                 reshape_transform=reshape) as cam:
        for name, target in targets.items():
            h = cam(input_tensor=x, targets=[target])[0]
            heat[name] = np.nan_to_num(h.astype(np.float32), nan=0.0)
    overlays = {k: show_cam_on_image(rgb, v, use_rgb=True, image_weight=0.55) for k, v in heat.items()}
    return Explanation(rgb, overlays, heat, chosen, top5)
