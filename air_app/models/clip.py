"""CLIP through open_clip: `ARCH:PRETRAINED` specs, local checkpoints, and the tiny offline preset.

Specs:
- ``ViT-B-32:openai`` — an open_clip pretrained tag (from the Hugging Face cache, or downloaded when online).
  OpenAI weights need QuickGELU; open_clip sets it from the tag.
- ``ViT-B-32-quickgelu:/path/weights.safetensors`` — a local state dict (.safetensors, or .pt/.bin loaded with
  ``weights_only=True``). Use the ``-quickgelu`` architecture for OpenAI-trained weights in a file.
- ``local-dir:/path`` — a folder with ``open_clip_config.json`` and ``open_clip_model.safetensors``.
- ``tiny`` — the offline preset (random weights, see :mod:`air_app.models.tiny`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from . import tiny


@dataclass(frozen=True)
class ClipSpec:
    arch: str
    pretrained: str | None  # tag, file path, or None for local-dir/tiny
    kind: str  # "tag" | "file" | "local-dir" | "tiny"

    @property
    def text(self) -> str:
        if self.kind == "tiny":
            return "tiny"
        if self.kind == "local-dir":
            return self.arch
        return f"{self.arch}:{self.pretrained}"


def parse_clip_spec(spec: str) -> ClipSpec:
    spec = (spec or "").strip()
    if not spec:
        raise UserError("empty CLIP spec: use ARCH:PRETRAINED (e.g. ViT-B-32:openai), ARCH:/path/weights.safetensors or tiny")
    if spec == "tiny":
        return ClipSpec(tiny.TINY_CLIP_ARCH, None, "tiny")
    if spec.startswith("local-dir:"):
        path = Path(spec[len("local-dir:"):]).expanduser()
        if not (path / "open_clip_config.json").is_file():
            raise UserError(f"CLIP folder {path} has no open_clip_config.json")
        return ClipSpec(f"local-dir:{path.resolve()}", None, "local-dir")
    if ":" not in spec:
        raise UserError(f"CLIP spec {spec!r} needs the form ARCH:PRETRAINED, e.g. ViT-B-32:openai or ViT-B-32:/path/w.safetensors")
    arch, pretrained = spec.split(":", 1)
    import open_clip

    tiny.register_tiny_clip_config()
    if arch not in open_clip.list_models():
        raise UserError(f"unknown CLIP architecture {arch!r}; examples: ViT-B-32, ViT-B-16, ViT-L-14, ViT-B-32-quickgelu")
    looks_like_path = os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
    if looks_like_path:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise UserError(f"CLIP weights file {path} does not exist")
        return ClipSpec(arch, str(path.resolve()), "file")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        raise UserError(f"unknown pretrained tag {pretrained!r} for {arch}; known: {', '.join(tags[:8]) or 'none'}")
    return ClipSpec(arch, pretrained, "tag")


def clip_tag_cached(arch: str, tag: str) -> bool:
    """Whether an open_clip pretrained tag's weights are already in the local Hugging Face cache."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    repo = (cfg.get("hf_hub") or "").strip("/")
    if not repo:
        return False
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, name)
        if isinstance(hit, str) and os.path.isfile(hit):
            return True
    return False


def _file_id(path: str) -> str:
    """Identify a weights file by size and a hash of its first and last MiB (fast even for GB files)."""
    st = os.stat(path)
    h = hashlib.sha256(str(st.st_size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if st.st_size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read())
    return h.hexdigest()[:16]


class ClipModel:
    """A loaded CLIP: encoders, preprocessing, tokenizer, and a stable id for feature caching.

    f̄(x) = :meth:`encode_images` (L2-normalised); t_c = :meth:`text_classifier` (template ensemble, normalised);
    s = :attr:`logit_scale`.
    """

    def __init__(self, model, preprocess: Callable, tokenizer: Callable, spec: ClipSpec, model_id: str,
                 device: torch.device, dtype: torch.dtype):
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.spec = spec
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.lock = threading.RLock()  # one forward at a time per process-wide model
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.logit_scale = float(model.logit_scale.exp().item())

    @property
    def is_tiny(self) -> bool:
        return self.spec.kind == "tiny"

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1]) if hasattr(self.model, "text_projection") else -1

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed images [B, 3, H, W] -> f̄(x) [B, D] float32, L2-normalised."""
        with self.lock:
            feats = self.model.encode_image(pixels.to(self.device, self.dtype))
        return F.normalize(feats.float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Texts -> normalised text features [N, D] float32."""
        out = []
        with self.lock:
            for i in range(0, len(texts), batch_size):
                ids = self.tokenizer(list(texts[i:i + batch_size])).to(self.device)
                out.append(F.normalize(self.model.encode_text(ids).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    def text_classifier(self, classes: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """t_c for every class: mean of the normalised template embeddings, renormalised. [C, D]."""
        prompts = [tpl.format(c) for c in classes for tpl in templates]
        feats = self.encode_texts(prompts).view(len(classes), len(templates), -1)
        return F.normalize(feats.mean(dim=1), dim=-1)

    def image_to_numpy(self, pixels: torch.Tensor) -> np.ndarray:
        """Undo CLIP's normalisation: [3, H, W] tensor -> float32 HxWx3 in [0, 1] (for CAM overlays)."""
        mean = torch.tensor(self.model.visual.image_mean or (0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
        std = torch.tensor(self.model.visual.image_std or (0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
        img = (pixels.detach().cpu().float() * std + mean).clamp(0, 1)
        return img.permute(1, 2, 0).numpy().astype(np.float32)


def load_clip(spec_text: str, device: torch.device) -> ClipModel:
    """Load CLIP for `spec_text` on `device` (fp16 on CUDA, fp32 on CPU)."""
    import open_clip

    spec = parse_clip_spec(spec_text)
    tiny.register_tiny_clip_config()
    precision = "fp16" if device.type == "cuda" else "fp32"
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if spec.kind == "tiny":
        path = str(tiny.tiny_clip_checkpoint())
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.arch, pretrained=path, precision=precision, device=device)
        model_id = f"tiny-clip:v{tiny.TINY_PRESET_VERSION}:{_file_id(path)}"
    elif spec.kind == "file":
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.arch, pretrained=spec.pretrained, precision=precision, device=device, weights_only=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0][:200]
            raise UserError(f"CLIP weights {spec.pretrained} do not fit architecture {spec.arch}: {first}") from None
        except Exception as exc:  # pickle errors, TorchScript archives, truncated files
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"cannot load CLIP weights {spec.pretrained}: {first} "
                            "(use a .safetensors or a plain state-dict .pt file)") from None
        model_id = f"{spec.arch}:file:{_file_id(spec.pretrained)}"
    elif spec.kind == "local-dir":
        model, _, preprocess = open_clip.create_model_and_transforms(spec.arch, precision=precision, device=device)
        weights = next((p for p in Path(spec.arch[len("local-dir:"):]).glob("open_clip_model.safetensors")), None)
        model_id = f"{spec.arch}:{_file_id(str(weights)) if weights else 'dir'}"
    else:
        if os.environ.get("HF_HUB_OFFLINE") == "1" and not clip_tag_cached(spec.arch, spec.pretrained):
            raise UserError(
                f"CLIP weights {spec.text} are not in the local Hugging Face cache and HF_HUB_OFFLINE=1: download them "
                f"on a connected machine (they land in ~/.cache/huggingface) or pass --clip ARCH:/path/weights.safetensors")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.arch, pretrained=spec.pretrained, precision=precision, device=device)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"could not load CLIP {spec.text} ({first}); without network pass --clip "
                            f"ARCH:/path/weights.safetensors or use --models tiny") from None
        model_id = spec.text
    model.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(spec.arch)
    return ClipModel(model, preprocess, tokenizer, spec, model_id, device, dtype)
