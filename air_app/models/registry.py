"""The process-wide model registry: resolve `--models auto|tiny|real`, pick the device, load each model once.

`auto` uses real weights when they are in the local Hugging Face cache (or are local files, or the hub answers
within a couple of seconds), else the tiny offline presets, with a loud warning: with random weights every
prediction is meaningless.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass

import torch

from ..config import ModelsConfig
from ..errors import UserError

log = logging.getLogger("air_app")

TINY_WARNING = ("OFFLINE TINY MODELS: CLIP and Stable Diffusion have seeded random weights; every prediction, "
                "sample and accuracy is meaningless. Use --models real with downloaded weights for real results.")


@dataclass(frozen=True)
class ResolvedModels:
    clip: str
    diffusion: str
    device: str
    is_tiny: bool
    note: str  # why these were chosen

    @property
    def banner(self) -> str | None:
        return TINY_WARNING if self.is_tiny else None


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but CUDA is not available on this machine; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


_HUB_CHECK: dict[str, tuple[float, bool]] = {}


def hub_reachable(timeout: float = 2.0, max_age: float = 300.0) -> bool:
    """A quick check that the model hub answers; never blocks longer than `timeout` (no retry loops). The answer is
    remembered for `max_age` seconds."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    import time

    cached = _HUB_CHECK.get("hub")
    if cached is not None and time.time() - cached[0] < max_age:
        return cached[1]
    ok = _probe_hub(timeout)
    _HUB_CHECK["hub"] = (time.time(), ok)
    return ok


def _probe_hub(timeout: float) -> bool:
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    result: list[bool] = []

    def probe():
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(result and result[0])


def _clip_available(spec: str) -> tuple[bool, str]:
    from .clip import clip_tag_cached, parse_clip_spec

    s = parse_clip_spec(spec)
    if s.kind in ("file", "local-dir", "tiny"):
        return True, "local"
    return (True, "cached") if clip_tag_cached(s.arch, s.pretrained) else (False, "not cached")


def _diffusion_available(spec: str) -> tuple[bool, str]:
    from .diffusion import diffusion_cached, resolve_diffusion_source

    source, kind = resolve_diffusion_source(spec)
    if kind != "hub":
        return True, "local"
    return (True, "cached") if diffusion_cached(source) else (False, "not cached")


def resolve_models(cfg: ModelsConfig) -> ResolvedModels:
    """Decide which weights a run uses. `real` without the weights is an error naming what is missing."""
    device = str(pick_device(cfg.device))
    if cfg.mode == "tiny":
        return ResolvedModels("tiny", "tiny", device, True, "tiny presets requested")
    clip_ok, clip_why = _clip_available(cfg.clip)
    diff_ok, diff_why = _diffusion_available(cfg.diffusion)
    if not (clip_ok and diff_ok) and hub_reachable():
        clip_ok = diff_ok = True
        clip_why = diff_why = "downloadable"
    if clip_ok and diff_ok:
        return ResolvedModels(cfg.clip, cfg.diffusion, device, cfg.clip == "tiny" and cfg.diffusion == "tiny",
                              f"real weights ({clip_why}/{diff_why})")
    missing = [name for name, ok in ((cfg.clip, clip_ok), (cfg.diffusion, diff_ok)) if not ok]
    if cfg.mode == "real":
        raise UserError(
            f"real weights requested but {' and '.join(missing)} are not in the local Hugging Face cache and the hub "
            f"is unreachable: download them on a connected machine into ~/.cache/huggingface (or set HF_HOME), or pass "
            f"--clip ARCH:/path/weights.safetensors and --diffusion /path/to/sd_dir, or use --models tiny")
    log.warning(TINY_WARNING)
    return ResolvedModels("tiny", "tiny", device, True, f"{' and '.join(missing)} unavailable offline")


class ModelRegistry:
    """Loads each (kind, spec, device) once and shares it between CLI stages and UI sessions."""

    def __init__(self):
        self._lock = threading.Lock()
        self._models: dict[tuple, object] = {}
        self.gpu_lock = threading.Lock()  # one heavy job at a time (the UI's shared queue slot uses it too)

    def clip(self, spec: str, device: str):
        from .clip import load_clip

        key = ("clip", spec, device)
        with self._lock:
            if key not in self._models:
                self._models[key] = load_clip(spec, torch.device(device))
            return self._models[key]

    def diffusion(self, spec: str, device: str):
        from .diffusion import load_pipeline

        key = ("diffusion", spec, device)
        with self._lock:
            if key not in self._models:
                self._models[key] = load_pipeline(spec, torch.device(device))
            return self._models[key]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


REGISTRY = ModelRegistry()
