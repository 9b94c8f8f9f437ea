"""One typed configuration for every stage, loaded from YAML and overridden from the command line.

The sections mirror the method (DESIGN.md §3); every default stated there is a field here. Unknown keys and
out-of-range values are rejected with a :class:`~air_app.errors.UserError` that names the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from .errors import UserError

PARADIGMS = ("ul", "ssl", "trzsl")
MODEL_MODES = ("auto", "tiny", "real")
CAPTION_MODES = ("domain", "pseudo")
SELECTION_RULES = ("topk", "grip", "all", "fixed")
PROMPT_TYPES = ("none", "textual", "visual")
TEMPLATE_STYLES = ("dataset", "base")


@dataclass
class ModelsConfig:
    """Which CLIP and Stable Diffusion weights to use (DESIGN §2)."""

    mode: str = "auto"  # auto | tiny | real
    clip: str = "ViT-B-32:openai"  # ARCH:PRETRAINED, ARCH:/path/file, or "tiny"
    diffusion: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # hub id, local dir, or "tiny"
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class DataConfig:
    """Where the images and class names come from, and how they are split into a paradigm."""

    images: str | None = None  # ImageFolder tree (ground truth from folder names) or a flat folder
    test_images: str | None = None  # optional separate test folder; else a seeded holdout when labels exist
    test_fraction: float = 0.2  # holdout fraction per class when ground truth exists and no test folder is given
    classes: list[str] | None = None  # class names, in label order
    classes_file: str | None = None  # one name per line (UTF-8)
    preset: str | None = None  # benchmark preset: flowers102, resisc45, dtd, eurosat, fgvcaircraft
    data_root: str | None = None  # with a preset: where `<root>/<preset>/{train,test}` lives
    templates: list[str] | None = None  # prompt templates, each with one "{}"; default: the preset's, else "a photo of a {}."
    template_style: str = "dataset"  # dataset (per-dataset ensemble) | base ("a photo of a {}")
    domain_caption: str | None = None  # class-free caption for LoRA; default: the preset's, else "a photo"
    paradigm: str = "ul"  # ul | ssl | trzsl
    labeled_per_class: int = 2  # SSL: n labeled images per class
    seen_fraction: float = 0.62  # TRZSL: fraction of classes that are seen and labeled
    split_seed: int | None = None  # default: the run seed


@dataclass
class FinetuneConfig:
    """Step 1: LoRA fine-tuning of the SD UNet on the target images."""

    enabled: bool = True
    rank: int = 8
    alpha: float = 8.0
    lr: float = 1e-4
    steps: int = 1000
    batch_size: int = 4
    resolution: int | None = None  # default: the pipeline's native size (512 for SD 1.5, 64 for tiny)
    captions: str = "domain"  # domain | pseudo
    checkpoint_every: int = 100  # steps between resumable checkpoints


@dataclass
class SynthesisConfig:
    """Steps 2-3: generation of M images per class and the choice of K representatives."""

    per_class: int = 64  # M
    keep: int | None = None  # K; default ceil(0.5 * M)
    steps: int = 25  # DPM-Solver++ steps
    guidance: float = 7.5
    resolution: int | None = None  # default: the pipeline's native size
    batch_size: int = 8
    negative_prompt: str = ""


@dataclass
class PseudoLabelConfig:
    """Steps 4-6: auxiliary classifier, fusion and pseudo-label selection."""

    lam: float = 1.0  # λ in p* = (p + λ p̂) / (1 + λ)
    rule: str = "topk"  # topk | grip | all | fixed
    k_per_class: int = 16  # K for topk / fixed
    grip_rounds: int = 10
    grip_step: float = 0.1  # fraction of the unlabeled pool added to the budget each round


@dataclass
class TrainConfig:
    """Steps 7-8: prompt learning (GRIP defaults)."""

    prompt: str = "none"  # none | textual | visual
    n_ctx: int = 16
    epochs: int = 150
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.1
    batch_size: int = 16
    warmup_epochs: int = 5
    beta: float = 1.0  # β, weight of the synthetic loss L_s
    paradigm_weight: float | None = None  # w: SSL w·CE_labeled + CE_pseudo (default |D_PL|/|D_L|); TRZSL CE_seen + w·CE_pseudo (default |D_L|/|D_PL|)
    resume: bool = True  # continue from a matching checkpoint; an incompatible one is an error unless false


@dataclass
class AirConfig:
    """The whole configuration of a run."""

    seed: int = 0
    workspace: str | None = None
    models: ModelsConfig = field(default_factory=ModelsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    pseudolabel: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ----------------------------------------------------------------------------------------------------- derived
    @property
    def keep_per_class(self) -> int:
        """K: the number of representative synthetic samples kept per class."""
        s = self.synthesis
        return s.keep if s.keep is not None else math.ceil(0.5 * s.per_class)

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.data.split_seed is None else self.data.split_seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def validate(self) -> "AirConfig":
        """Check every value; raise UserError naming the first bad key."""
        m, d, f, s, p, t = self.models, self.data, self.finetune, self.synthesis, self.pseudolabel, self.train
        _choice("models.mode", m.mode, MODEL_MODES)
        _choice("data.paradigm", d.paradigm, PARADIGMS)
        _choice("data.template_style", d.template_style, TEMPLATE_STYLES)
        _choice("finetune.captions", f.captions, CAPTION_MODES)
        _choice("pseudolabel.rule", p.rule, SELECTION_RULES)
        _choice("train.prompt", t.prompt, PROMPT_TYPES)
        for key, value in [
            ("synthesis.per_class", s.per_class), ("synthesis.steps", s.steps), ("synthesis.batch_size", s.batch_size),
            ("finetune.rank", f.rank), ("finetune.steps", f.steps), ("finetune.batch_size", f.batch_size),
            ("finetune.checkpoint_every", f.checkpoint_every), ("pseudolabel.k_per_class", p.k_per_class),
            ("pseudolabel.grip_rounds", p.grip_rounds), ("train.epochs", t.epochs), ("train.batch_size", t.batch_size),
            ("train.n_ctx", t.n_ctx), ("data.labeled_per_class", d.labeled_per_class),
        ]:
            if value <= 0:
                raise UserError(f"{key} must be a positive integer, got {value}")
        if s.keep is not None and s.keep <= 0:
            raise UserError(f"synthesis.keep (K) must be a positive integer, got {s.keep}")
        if self.keep_per_class > s.per_class:
            raise UserError(
                f"synthesis.keep (K={self.keep_per_class}) cannot exceed synthesis.per_class (M={s.per_class})")
        for key, value in [("finetune.resolution", f.resolution), ("synthesis.resolution", s.resolution)]:
            if value is not None and (value <= 0 or value % 8):
                raise UserError(f"{key} must be a positive multiple of 8, got {value}")
        if p.lam < 0 or not math.isfinite(p.lam):
            raise UserError(f"pseudolabel.lam (λ) must be a finite number >= 0, got {p.lam}")
        if t.beta < 0 or not math.isfinite(t.beta):
            raise UserError(f"train.beta (β) must be a finite number >= 0, got {t.beta}")
        for key, value in [("finetune.lr", f.lr), ("train.lr", t.lr), ("finetune.alpha", f.alpha)]:
            if not value > 0:
                raise UserError(f"{key} must be > 0, got {value}")
        if t.warmup_epochs < 0 or t.weight_decay < 0 or not 0 <= t.momentum < 1:
            raise UserError("train.warmup_epochs and train.weight_decay must be >= 0 and train.momentum in [0, 1)")
        if t.paradigm_weight is not None and t.paradigm_weight < 0:
            raise UserError(f"train.paradigm_weight must be >= 0, got {t.paradigm_weight}")
        if s.guidance < 0:
            raise UserError(f"synthesis.guidance must be >= 0, got {s.guidance}")
        if not 0 <= d.test_fraction < 1:
            raise UserError(f"data.test_fraction must be in [0, 1), got {d.test_fraction}")
        if not 0 < d.seen_fraction < 1:
            raise UserError(f"data.seen_fraction must be in (0, 1), got {d.seen_fraction}")
        if not 0 < p.grip_step <= 1:
            raise UserError(f"pseudolabel.grip_step must be in (0, 1], got {p.grip_step}")
        if d.templates is not None:
            if not d.templates:
                raise UserError("data.templates is empty: give at least one template such as 'a photo of a {}.'")
            for tpl in d.templates:
                if not isinstance(tpl, str) or tpl.count("{}") != 1:
                    raise UserError(f"template {tpl!r} must contain exactly one '{{}}' where the class name goes")
        return self


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


# --------------------------------------------------------------------------------------------------------- loading
def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's type, or raise UserError."""
    origin = get_origin(tp)
    args = get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise UserError(f"{key} cannot be empty")
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, inner[0], value)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list")
        return [_coerce(key, args[0], v) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise UserError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise UserError(f"{key} must be an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise UserError(f"{key} must be an integer, got {value!r}") from None
        if not f.is_integer():
            raise UserError(f"{key} must be an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{key} must be a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise UserError(f"{key} must be a string, got {value!r}")
        return str(value)
    raise UserError(f"{key}: unsupported value {value!r}")


def _apply(obj: Any, data: dict[str, Any], prefix: str = "", strict: bool = True) -> None:
    hints = get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            if not strict:
                continue
            raise UserError(f"unknown config key '{full}'; known keys here: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"config key '{full}' is a section: give a mapping of its keys")
            _apply(current, value, full + ".", strict)
        else:
            setattr(obj, key, _coerce(full, hints[key], value))


def config_from_dict(data: dict[str, Any] | None, base: AirConfig | None = None, strict: bool = True) -> AirConfig:
    """Apply a nested mapping onto `base`. `strict=False` skips keys this version does not know (used for configs
    stored in a workspace by an older version); user-given configs are always strict."""
    cfg = base if base is not None else AirConfig()
    if data:
        if not isinstance(data, dict):
            raise UserError("a config must be a mapping of sections (models, data, synthesis, ...)")
        _apply(cfg, data, strict=strict)
    return cfg


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> AirConfig:
    """Defaults, then the YAML file, then dotted overrides such as {"pseudolabel.lam": 0.5}; validated."""
    cfg = AirConfig()
    if path is not None:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise UserError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
        config_from_dict(data or {}, cfg)
    if overrides:
        config_from_dict(nest_dotted(overrides), cfg)
    return cfg.validate()


def nest_dotted(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"config key '{'.'.join(parts[:i + 1])}' is given a value and is also used as a "
                                f"section in '{key}'; give one or the other")
        if isinstance(node.get(parts[-1]), dict) and not isinstance(value, dict):
            raise UserError(f"config key '{key}' is a section: give a mapping of its keys")
        node[parts[-1]] = value
    return out
