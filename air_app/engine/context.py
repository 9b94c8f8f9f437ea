"""What every stage gets: the workspace, the config, the resolved models, and hooks for progress, logging and
cancellation (the CLI wires them to tqdm and stderr, the UI to gr.Progress and a stop button)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from ..config import AirConfig
from ..data.benchmarks import get_preset, preset_templates
from ..data.classes import read_classes_file, validate_classes
from ..errors import UserError
from ..models.registry import REGISTRY, ResolvedModels, resolve_models
from ..workspace import Workspace

log = logging.getLogger("air_app")

DEFAULT_TEMPLATES = ("a photo of a {}.",)
DEFAULT_DOMAIN_CAPTION = "a photo"


@dataclass
class Hooks:
    """Progress reporting and cancellation; all optional."""

    say: Callable[[str], None] = field(default=lambda msg: log.info(msg))
    progress: Callable[[str, int, int], None] | None = None  # (what, done, total)
    should_stop: Callable[[], bool] | None = None
    on_epoch: Callable[[dict], None] | None = None  # prompt training: one record per epoch (loss, accuracy)

    def tick(self, what: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(what, done, total)

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise InterruptedError("cancelled")


@dataclass
class Context:
    ws: Workspace
    cfg: AirConfig
    models: ResolvedModels
    hooks: Hooks = field(default_factory=Hooks)

    def clip(self):
        return REGISTRY.clip(self.models.clip, self.models.device)

    def pipeline(self):
        return REGISTRY.diffusion(self.models.diffusion, self.models.device)

    @property
    def classes(self) -> list[str]:
        return self.ws.classes()

    @property
    def templates(self) -> list[str]:
        return list(self.ws.meta("templates") or DEFAULT_TEMPLATES)

    @property
    def domain_caption(self) -> str:
        return self.ws.meta("domain_caption") or DEFAULT_DOMAIN_CAPTION


def resolve_task(cfg: AirConfig) -> tuple[list[str], list[str], str]:
    """(class names, templates, domain caption) from the config: explicit names or file, else the preset."""
    d = cfg.data
    preset = get_preset(d.preset) if d.preset else None
    if d.classes:
        classes = validate_classes(d.classes, "class list")
    elif d.classes_file:
        classes = read_classes_file(d.classes_file)
    elif preset is not None:
        classes = list(preset.classes)
    else:
        raise UserError("no class names: pass --classes FILE (one name per line) or --preset NAME")
    if d.templates:
        templates = list(d.templates)
    elif preset is not None:
        templates = list(preset_templates(preset, d.template_style))
    else:
        templates = list(DEFAULT_TEMPLATES)
    caption = d.domain_caption or (preset.domain_caption if preset is not None else DEFAULT_DOMAIN_CAPTION)
    return classes, templates, caption


def make_context(ws: Workspace, cfg: AirConfig, hooks: Hooks | None = None,
                 models: ResolvedModels | None = None) -> Context:
    models = models or resolve_models(cfg.models)
    ws.set_meta("models", {"clip": models.clip, "diffusion": models.diffusion, "device": models.device,
                           "is_tiny": models.is_tiny, "note": models.note})
    return Context(ws, cfg, models, hooks or Hooks())
