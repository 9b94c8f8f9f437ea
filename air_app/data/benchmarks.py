"""Benchmark presets (class names, prompt templates, domain caption) and a torchvision downloader.

Each preset lives in ``benchmark_presets/<name>.json``. The JSON file records where every list came from
(``sources``).

* ``classes`` are the base protocol's names (Menghini et al., "Enhancing CLIP with CLIP", repository
  BatsResearch/menghini-neurips23-code, which uses ELEVATER splits), listed in **label-index order**. The order
  was checked by rerunning the protocol's seeded seen/unseen draw
  (``np.random.seed(s); np.random.choice(C, int(0.62*C), replace=False)``): it reproduces the stored
  ``data/data_splits/*.json`` of every dataset.
* ``templates`` are the CLIP-paper per-dataset template ensembles (``openai/CLIP`` ``data/prompts.md``).
  ``base_templates`` hold the base protocol's single ``"a photo of a {}"``.
* ``domain_caption`` is a caption with no class name in it, used for LoRA fine-tuning.

``download_benchmark`` uses torchvision to fetch a dataset, then writes it as an ImageFolder tree
``<root>/<name>/{train,test}/<class name>/<split>_<n>.jpg``:

* train is the protocol's train+val pool and test is its test split.
  - Flowers102: train+val / test.
  - DTD: partition 1, train+val / test.
  - FGVCAircraft: trainval / test, at variant level.
  - EuroSAT: torchvision ships no split. It gets a seeded stratified split with ELEVATER ``eurosat_clip`` sizes:
    10/27 of each class go to train and 5/27 to test (about 10,000 / 5,000 images), and the rest is unused.
* torchvision label indices are mapped to preset indices **by name**, through the ``torchvision_aliases``
  table of each JSON file.
  - Flowers102 and DTD use the same order as the preset. Flowers102 spells three names differently.
  - EuroSAT folder names such as ``HerbaceousVegetation`` map to the descriptive names.
  - FGVCAircraft's ``variants.txt`` is sorted case-sensitively and writes ``F-16A/B`` and ``F/A-18``. The
    protocol's order is case-insensitive and writes ``F-16A-B`` and ``F-A-18``.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from air_app.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).with_name("benchmark_presets")
SEEN_FRACTION = 0.62  # TRZSL: int(0.62 * C) classes are seen (base protocol)
EUROSAT_SPLIT_SEED = 0
EUROSAT_TRAIN_FRACTION = 10 / 27  # ELEVATER eurosat_clip: 10,000 train+val images out of 27,000
EUROSAT_TEST_FRACTION = 5 / 27  # ... and 5,000 test images
EXPORT_MARKER = ".export.json"  # written last, inside the temporary folder: its presence means "complete"
TEMPLATE_STYLES = ("dataset", "base")

# torchvision constructor arguments for each exported split ("train" = the protocol's train+val pool).
_TORCHVISION_SPLITS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "Flowers102": {"train": [{"split": "train"}, {"split": "val"}], "test": [{"split": "test"}]},
    "DTD": {
        "train": [{"split": "train", "partition": 1}, {"split": "val", "partition": 1}],
        "test": [{"split": "test", "partition": 1}],
    },
    "FGVCAircraft": {
        "train": [{"split": "trainval", "annotation_level": "variant"}],
        "test": [{"split": "test", "annotation_level": "variant"}],
    },
}


@dataclass(frozen=True)
class BenchmarkPreset:
    """Everything the pipeline needs to know about one benchmark dataset."""

    name: str
    title: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    base_templates: tuple[str, ...]
    domain_caption: str
    torchvision_name: str | None
    seen_count: int


# ----------------------------------------------------------------------------------------------- presets


def list_presets() -> list[str]:
    """Names of the available presets, sorted."""
    return sorted(path.stem for path in PRESET_DIR.glob("*.json"))


def get_preset(name: str) -> BenchmarkPreset:
    """Return a preset by name. The match ignores case, spaces, '-' and '_' ("FGVC-Aircraft" works)."""
    choices = list_presets()
    key = _normalise(name)
    for choice in choices:
        if _normalise(choice) == key:
            return _load_preset(choice)
    raise UserError(f"unknown benchmark preset {name!r}; choose one of: {', '.join(choices)}")


def preset_templates(preset: BenchmarkPreset | str, style: str) -> tuple[str, ...]:
    """The template ensemble of a preset: ``"dataset"`` (CLIP-paper ensemble) or ``"base"`` (base protocol)."""
    if isinstance(preset, str):
        preset = get_preset(preset)
    if style == "dataset":
        return preset.templates
    if style == "base":
        return preset.base_templates
    raise UserError(f"unknown template style {style!r}; choose one of: {', '.join(TEMPLATE_STYLES)}")


def _normalise(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch not in " -_")


@lru_cache(maxsize=None)
def _preset_json(name: str) -> dict[str, Any]:
    return json.loads((PRESET_DIR / f"{name}.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def _load_preset(name: str) -> BenchmarkPreset:
    raw = _preset_json(name)
    classes = tuple(raw["classes"])
    preset = BenchmarkPreset(
        name=raw["name"],
        title=raw["title"],
        classes=classes,
        templates=tuple(raw["templates"]),
        base_templates=tuple(raw["base_templates"]),
        domain_caption=raw["domain_caption"],
        torchvision_name=raw.get("torchvision_name"),
        seen_count=int(SEEN_FRACTION * len(classes)),
    )
    _check_preset(preset, name)
    return preset


def _check_preset(preset: BenchmarkPreset, stem: str) -> None:
    """Reject malformed package data (a bug, not a user error)."""
    problems = []
    if preset.name != stem:
        problems.append(f"name {preset.name!r} differs from its file name")
    if not preset.classes or len(set(preset.classes)) != len(preset.classes):
        problems.append("classes are empty or repeated")
    if any(not c.strip() or c != c.strip() or "/" in c or c.startswith(".") for c in preset.classes):
        problems.append("a class name is blank or unusable as a folder name")
    for template in preset.templates + preset.base_templates:
        if template.count("{}") != 1:
            problems.append(f"template {template!r} must contain exactly one '{{}}'")
    if not preset.templates or not preset.base_templates or not preset.domain_caption.strip():
        problems.append("templates, base_templates and domain_caption must not be empty")
    if problems:
        raise ValueError(f"benchmark preset {stem}: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------- download


def download_benchmark(name: str, root: str | Path) -> Path:
    """Download a benchmark with torchvision and write it as ``<root>/<name>/{train,test}/<class>/*.jpg``.

    If a complete export is already there, nothing is done. Raw torchvision files go to
    ``<root>/_torchvision``. Raises :class:`UserError` when the network is unreachable, and for datasets that
    torchvision cannot fetch (RESISC45).
    """
    preset = get_preset(name)
    root = Path(root).expanduser()
    dest = root / preset.name
    if _is_complete_export(dest, preset.classes):
        return dest
    if preset.torchvision_name is None:
        if (dest / "train").is_dir() and (dest / "test").is_dir():
            return dest  # arranged by hand as documented below
        raise UserError(
            f"{preset.title} cannot be downloaded automatically: download it manually (e.g. the ELEVATER "
            f"'resisc45_clip' split) and arrange it as an ImageFolder tree {dest}/train/<class name>/*.jpg "
            f"and {dest}/test/<class name>/*.jpg, or pass an ImageFolder tree with --images"
        )
    tv_root = root / "_torchvision"
    try:
        parts = _load_torchvision(preset.torchvision_name, tv_root)
    except (OSError, RuntimeError) as exc:  # URLError, socket errors, torchvision's "not found or corrupted"
        raise UserError(
            f"could not download {preset.torchvision_name} into {tv_root} (no network? {exc}): download it "
            f"on a connected machine and copy {tv_root} here, or pass an ImageFolder tree with --images"
        ) from exc
    aliases = _preset_json(preset.name).get("torchvision_aliases", {})
    splits = {split: _mapped_samples(pieces, preset.classes, aliases) for split, pieces in parts.items()}
    log.info("exporting %s to %s", preset.title, dest)
    return export_image_folder(splits, preset.classes, dest)


def _load_torchvision(tv_name: str, tv_root: Path) -> dict[str, list[tuple[Any, Sequence[int]]]]:
    """Build the torchvision datasets (downloading them) and return ``{split: [(dataset, indices), ...]}``."""
    from torchvision import datasets  # lazy: torchvision is heavy and only needed here

    dataset_cls = getattr(datasets, tv_name)
    tv_root.mkdir(parents=True, exist_ok=True)
    if tv_name == "EuroSAT":
        dataset = dataset_cls(root=str(tv_root), download=True)
        train, test = stratified_split(
            dataset.targets, EUROSAT_TRAIN_FRACTION, EUROSAT_TEST_FRACTION, EUROSAT_SPLIT_SEED
        )
        return {"train": [(dataset, train)], "test": [(dataset, test)]}
    parts: dict[str, list[tuple[Any, Sequence[int]]]] = {}
    for split, kwargs_list in _TORCHVISION_SPLITS[tv_name].items():
        datasets_ = [dataset_cls(root=str(tv_root), download=True, **kwargs) for kwargs in kwargs_list]
        parts[split] = [(dataset, range(len(dataset))) for dataset in datasets_]
    return parts


def _mapped_samples(
    pieces: Sequence[tuple[Any, Sequence[int]]], classes: Sequence[str], aliases: Mapping[str, str]
) -> Iterator[tuple[Image.Image, int]]:
    """Yield ``(image, preset label)`` for the chosen indices of each torchvision dataset."""
    for dataset, indices in pieces:
        mapping = torchvision_label_map(getattr(dataset, "classes", None), classes, aliases)
        for index in indices:
            image, label = dataset[index]
            yield image, mapping[label]


def torchvision_label_map(
    tv_classes: Sequence[str] | None, classes: Sequence[str], aliases: Mapping[str, str]
) -> list[int]:
    """``map[tv_label] = preset label``, matching names after ``aliases``. No class list means the same order."""
    if tv_classes is None:
        return list(range(len(classes)))
    index = {name: i for i, name in enumerate(classes)}
    missing = [name for name in tv_classes if aliases.get(name, name) not in index]
    if missing:
        raise ValueError(f"torchvision classes {missing} have no match among the preset classes")
    return [index[aliases.get(name, name)] for name in tv_classes]


def stratified_split(
    labels: Sequence[int], train_fraction: float, test_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Seeded per-class split: ``round(n_c * fraction)`` indices of class c to train and test (disjoint)."""
    rng = random.Random(seed)
    train: list[int] = []
    test: list[int] = []
    for label in sorted(set(labels)):
        members = [i for i, lab in enumerate(labels) if lab == label]
        rng.shuffle(members)
        n_train = round(len(members) * train_fraction)
        n_test = round(len(members) * test_fraction)
        train += members[:n_train]
        test += members[n_train : n_train + n_test]
    return sorted(train), sorted(test)


# ------------------------------------------------------------------------------------------------ export


def export_image_folder(
    splits: Mapping[str, Iterable[tuple[Image.Image, int]]], classes: Sequence[str], dest: str | Path
) -> Path:
    """Write ``{split: [(PIL image, label), ...]}`` as ``dest/<split>/<class name>/<split>_<n>.jpg``.

    Idempotent: if a complete export for the same classes exists, it returns at once and reads no sample.
    Atomic: the tree is written to a hidden sibling folder, marked complete, then renamed to ``dest``.
    File names are unique across the whole tree. Every class folder is created, even when it gets no image.
    """
    dest = Path(dest)
    if _is_complete_export(dest, classes):
        return dest
    if dest.exists():
        raise UserError(f"{dest} exists but is not a complete export of these classes; move it away and retry")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        counts = {split: _write_split(samples, classes, tmp / split) for split, samples in splits.items()}
        marker = {"classes": list(classes), "counts": counts}
        (tmp / EXPORT_MARKER).write_text(json.dumps(marker, indent=2, ensure_ascii=False), encoding="utf-8")
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (%s)", dest, ", ".join(f"{split}: {n} images" for split, n in counts.items()))
    return dest


def _write_split(samples: Iterable[tuple[Image.Image, int]], classes: Sequence[str], split_dir: Path) -> int:
    for name in classes:
        (split_dir / name).mkdir(parents=True)
    count = 0
    for image, label in samples:
        if not 0 <= label < len(classes):
            raise ValueError(f"label {label} is out of range for {len(classes)} classes")
        count += 1
        image.convert("RGB").save(split_dir / classes[label] / f"{split_dir.name}_{count:06d}.jpg", quality=95)
    return count


def _is_complete_export(dest: Path, classes: Sequence[str]) -> bool:
    try:
        marker = json.loads((dest / EXPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    counts = marker.get("counts") if isinstance(marker, dict) else None
    if not isinstance(counts, dict) or not counts or marker.get("classes") != list(classes):
        return False
    return all((dest / split).is_dir() for split in counts)
