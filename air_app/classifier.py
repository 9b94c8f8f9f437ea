"""Use the result: a classifier built from a workspace's learned prompts.

    import air_app
    clf = air_app.load_classifier("my_workspace")
    clf.predict(["a.jpg", "b.jpg"])        # -> [("sunflower", 0.93), ("daisy", 0.71)]
    clf.probs([PIL.Image.open("c.jpg")])   # -> np.ndarray [N, C]
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import UserError


class PromptClassifier:
    """CLIP with the workspace's learned textual (CoOp) or visual (VPT) prompt: p(c|x) = softmax(s·f̄(x)·t_c)."""

    def __init__(self, clip, module, prompt_type: str, classes: list[str], text_feats: torch.Tensor | None):
        self.clip, self.module, self.prompt_type, self.classes = clip, module, prompt_type, classes
        with torch.no_grad():
            self._text = module() if prompt_type == "text" else text_feats

    def _pixels(self, images: Sequence) -> torch.Tensor:
        from PIL import Image

        from .data.images import load_rgb

        out = []
        for im in images:
            if isinstance(im, Image.Image):
                out.append(self.clip.preprocess(im.convert("RGB")))
            else:
                if not Path(im).is_file():
                    raise UserError(f"image {im} does not exist")
                out.append(self.clip.preprocess(load_rgb(im)))
        return torch.stack(out).to(self.clip.device, self.clip.dtype)

    @torch.no_grad()
    def probs(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        """Class probabilities [N, C] for PIL images or paths."""
        rows = []
        for i in range(0, len(images), batch_size):
            x = self._pixels(images[i:i + batch_size])
            feats = self.module.encode(x) if self.prompt_type == "visual" else self.clip.encode_images(x)
            logits = self.clip.logit_scale * feats.to(self._text.device).float() @ self._text.float().t()
            rows.append(torch.softmax(logits, dim=1).cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, len(self.classes)))

    def predict(self, images: Sequence) -> list[tuple[str, float]]:
        """(class name, probability) of the top class for each image."""
        p = self.probs(images)
        return [(self.classes[i], float(row[i])) for row, i in zip(p, p.argmax(1))]


def load_classifier(workspace: str | Path, device: str | None = None) -> PromptClassifier:
    """Load the prompts trained in `workspace` (``prompts/prompt.safetensors`` + manifest) with the same CLIP."""
    from .engine.prompts import load_prompt, restore_prompt
    from .engine.train import PROMPT_FILE
    from .models.registry import REGISTRY, pick_device
    from .workspace import Workspace

    ws = Workspace.open(workspace)
    path = ws.path("prompts", PROMPT_FILE)
    _, manifest = load_prompt(path)
    models = ws.meta("models") or {}
    spec = manifest.get("clip_model") or models.get("clip")
    if not spec:
        raise UserError(f"{path}.json does not name its CLIP model")
    clip = REGISTRY.clip(spec, str(pick_device(device or "auto")))
    if manifest.get("clip_model_id") and manifest["clip_model_id"] != clip.model_id:
        raise UserError(f"the prompt was trained with CLIP {manifest['clip_model_id']}, but {spec} loads as "
                        f"{clip.model_id}")
    module = restore_prompt(clip, path)
    text = None
    if manifest["prompt_type"] == "visual":
        text = clip.text_classifier(manifest["classes"], manifest.get("templates") or ["a photo of a {}."])
        text = text.to(clip.device)
    return PromptClassifier(clip, module, manifest["prompt_type"], list(manifest["classes"]), text)
