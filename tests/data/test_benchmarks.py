"""Benchmark presets and the ImageFolder exporter. Offline: torchvision dataset classes are replaced by fakes."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
from PIL import Image

from air_app.data import benchmarks
from air_app.data.benchmarks import (
    BenchmarkPreset,
    download_benchmark,
    export_image_folder,
    get_preset,
    list_presets,
    preset_templates,
    stratified_split,
    torchvision_label_map,
)
from air_app.errors import UserError

EXPECTED_COUNTS = {"flowers102": 102, "resisc45": 45, "dtd": 47, "eurosat": 10, "fgvcaircraft": 100}
EXPECTED_SEEN = {"flowers102": 63, "resisc45": 27, "dtd": 29, "eurosat": 6, "fgvcaircraft": 62}


def _image(value: int = 0) -> Image.Image:
    return Image.new("RGB", (8, 8), (value * 40 % 256, 0, 0))


# ----------------------------------------------------------------------------------------------- presets


def test_all_expected_presets_exist():
    assert set(EXPECTED_COUNTS) <= set(list_presets())


@pytest.mark.parametrize("name", list_presets())
def test_preset_is_well_formed(name):
    preset = get_preset(name)
    assert isinstance(preset, BenchmarkPreset)
    assert preset.name == name
    assert preset.classes and len(set(preset.classes)) == len(preset.classes)
    assert all(c.strip() == c and c and "/" not in c for c in preset.classes)
    assert preset.seen_count == int(0.62 * len(preset.classes))
    assert preset.domain_caption.strip() and "{}" not in preset.domain_caption
    assert preset.base_templates == ("a photo of a {}",)
    for template in preset.templates + preset.base_templates:
        assert template.count("{}") == 1
        assert template.format(preset.classes[0]).count(preset.classes[0]) >= 1


@pytest.mark.parametrize("name, count", EXPECTED_COUNTS.items())
def test_class_counts_and_seen_counts(name, count):
    preset = get_preset(name)
    assert len(preset.classes) == count
    assert preset.seen_count == EXPECTED_SEEN[name]


def test_class_names_match_the_base_protocol_spelling():
    assert get_preset("eurosat").classes[:3] == ("annual crop land", "forest", "brushland or shrubland")
    assert get_preset("resisc45").classes[:3] == ("airplane", "airport", "baseball diamond")
    aircraft = get_preset("fgvcaircraft").classes
    assert aircraft[:2] == ("707-320", "727-200") and "A300B4" in aircraft and "F-A-18" in aircraft
    assert aircraft.index("An-12") < aircraft.index("ATR-42")  # protocol order, not torchvision's
    assert get_preset("flowers102").classes[0] == "pink primrose"
    assert get_preset("dtd").classes[-1] == "zigzagged"


def test_dataset_templates_are_domain_specific():
    assert "a photo of a {}, a type of flower." in get_preset("flowers102").templates
    assert "a centered satellite photo of {}." in get_preset("eurosat").templates
    assert "a photo of a {}, a type of aircraft." in get_preset("fgvcaircraft").templates


@pytest.mark.parametrize("spelling", ["Flowers102", "FLOWERS102", " flowers102 ", "Flowers-102"])
def test_get_preset_ignores_case(spelling):
    assert get_preset(spelling).name == "flowers102"


def test_get_preset_accepts_dashes():
    assert get_preset("FGVC-Aircraft").name == "fgvcaircraft"


def test_unknown_preset_lists_the_choices():
    with pytest.raises(UserError) as info:
        get_preset("imagenet")
    message = str(info.value)
    assert "unknown benchmark preset 'imagenet'" in message
    for name in list_presets():
        assert name in message


def test_preset_templates_styles():
    preset = get_preset("dtd")
    assert preset_templates(preset, "dataset") == preset.templates
    assert preset_templates(preset, "base") == ("a photo of a {}",)
    assert preset_templates("dtd", "base") == ("a photo of a {}",)
    with pytest.raises(UserError, match="dataset"):
        preset_templates(preset, "fancy")


def test_torchvision_flowers_names_map_to_the_same_indices():
    datasets = pytest.importorskip("torchvision.datasets")
    classes = get_preset("flowers102").classes
    aliases = benchmarks._preset_json("flowers102")["torchvision_aliases"]
    assert torchvision_label_map(datasets.Flowers102.classes, classes, aliases) == list(range(102))


def test_label_map_by_name_and_alias():
    classes = ("a", "b-c", "d")
    assert torchvision_label_map(["d", "b/c", "a"], classes, {"b/c": "b-c"}) == [2, 1, 0]
    assert torchvision_label_map(None, classes, {}) == [0, 1, 2]
    with pytest.raises(ValueError):
        torchvision_label_map(["zzz"], classes, {})


def test_stratified_split_is_seeded_disjoint_and_stratified():
    labels = [0] * 27 + [1] * 54
    train, test = stratified_split(labels, 10 / 27, 5 / 27, seed=0)
    assert (train, test) == stratified_split(labels, 10 / 27, 5 / 27, seed=0)
    assert not set(train) & set(test)
    assert [labels[i] for i in train].count(0) == 10 and [labels[i] for i in train].count(1) == 20
    assert [labels[i] for i in test].count(0) == 5 and [labels[i] for i in test].count(1) == 10
    assert stratified_split(labels, 10 / 27, 5 / 27, seed=1) != (train, test)


# ------------------------------------------------------------------------------------------------ export


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))


def test_export_writes_an_image_folder_tree(tmp_path):
    classes = ("cat", "dog", "colt's foot")
    splits = {"train": [(_image(1), 0), (_image(2), 1), (_image(3), 1)], "test": [(_image(4), 2)]}
    dest = export_image_folder(splits, classes, tmp_path / "toy")
    assert dest == tmp_path / "toy"
    assert _files(dest) == [
        "test/colt's foot/test_000001.jpg",
        "train/cat/train_000001.jpg",
        "train/dog/train_000002.jpg",
        "train/dog/train_000003.jpg",
    ]
    assert all((dest / split / c).is_dir() for split in splits for c in classes)  # empty classes too
    with Image.open(dest / "train/cat/train_000001.jpg") as image:
        assert image.mode == "RGB" and image.size == (8, 8)
    marker = json.loads((dest / benchmarks.EXPORT_MARKER).read_text())
    assert marker == {"classes": list(classes), "counts": {"train": 3, "test": 1}}
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]  # no temporary folder left behind


def test_export_is_idempotent_and_reads_nothing_the_second_time(tmp_path):
    classes = ("a", "b")
    export_image_folder({"train": [(_image(), 0)], "test": [(_image(), 1)]}, classes, tmp_path / "x")
    before = _files(tmp_path / "x")

    def explode():
        raise AssertionError("samples must not be read when the export is complete")
        yield  # pragma: no cover

    export_image_folder({"train": explode(), "test": explode()}, classes, tmp_path / "x")
    assert _files(tmp_path / "x") == before


def test_failed_export_leaves_nothing(tmp_path):
    def broken():
        yield _image(), 0
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        export_image_folder({"train": broken()}, ("a",), tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "x" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="not a complete export"):
        export_image_folder({"train": []}, ("a",), tmp_path / "x")


def test_export_rejects_bad_labels(tmp_path):
    with pytest.raises(ValueError):
        export_image_folder({"train": [(_image(), 5)]}, ("a",), tmp_path / "x")


# ---------------------------------------------------------------------------------------------- download


def test_resisc45_must_be_downloaded_manually(tmp_path):
    with pytest.raises(UserError, match="manually"):
        download_benchmark("resisc45", tmp_path)


def test_resisc45_arranged_by_hand_is_accepted(tmp_path):
    for split in ("train", "test"):
        (tmp_path / "resisc45" / split / "airplane").mkdir(parents=True)
    assert download_benchmark("RESISC45", tmp_path) == tmp_path / "resisc45"


def test_no_network_becomes_a_user_error(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")

    class Offline:
        def __init__(self, *args, **kwargs):
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.Flowers102", Offline)
    with pytest.raises(UserError) as info:
        download_benchmark("flowers102", tmp_path)
    message = str(info.value)
    assert "could not download Flowers102" in message and "--images" in message and "\n" not in message
    assert not (tmp_path / "flowers102").exists()


class _FakeAircraft:
    """Mimics torchvision.datasets.FGVCAircraft: variants.txt order and '/' in two names."""

    classes = ["A380", "ATR-42", "An-12", "F-16A/B", "F/A-18"]
    created: list[dict] = []

    def __init__(self, root, download=False, split="trainval", annotation_level="variant"):
        assert download and annotation_level == "variant"
        _FakeAircraft.created.append({"root": root, "split": split})
        self._labels = [0, 1, 2, 3, 4] if split == "trainval" else [4, 2]

    def __len__(self):
        return len(self._labels)

    def __getitem__(self, index):
        return _image(index), self._labels[index]


def test_download_maps_torchvision_labels_by_name(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    monkeypatch.setattr("torchvision.datasets.FGVCAircraft", _FakeAircraft)
    _FakeAircraft.created = []
    dest = download_benchmark("fgvcaircraft", tmp_path)
    assert dest == tmp_path / "fgvcaircraft"
    assert {c["split"] for c in _FakeAircraft.created} == {"trainval", "test"}
    assert all(Path(c["root"]) == tmp_path / "_torchvision" for c in _FakeAircraft.created)
    assert _files(dest / "train") == [
        "A380/train_000001.jpg",
        "ATR-42/train_000002.jpg",
        "An-12/train_000003.jpg",
        "F-16A-B/train_000004.jpg",
        "F-A-18/train_000005.jpg",
    ]
    assert _files(dest / "test") == ["An-12/test_000002.jpg", "F-A-18/test_000001.jpg"]
    assert len([p for p in (dest / "train").iterdir() if p.is_dir()]) == 100

    _FakeAircraft.created = []
    assert download_benchmark("fgvcaircraft", tmp_path) == dest  # idempotent: torchvision not touched
    assert _FakeAircraft.created == []


class _FakeEuroSAT:
    """Mimics torchvision.datasets.EuroSAT (an ImageFolder over sorted folder names, no split)."""

    classes = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
               "Pasture", "PermanentCrop", "Residential", "River", "SeaLake"]  # fmt: skip

    def __init__(self, root, download=False):
        self.targets = [label for label in range(10) for _ in range(27)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return _image(index), self.targets[index]


def test_eurosat_gets_a_seeded_stratified_split(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    monkeypatch.setattr("torchvision.datasets.EuroSAT", _FakeEuroSAT)
    dest = download_benchmark("eurosat", tmp_path)
    classes = get_preset("eurosat").classes
    for name in classes:
        assert len(list((dest / "train" / name).iterdir())) == 10
        assert len(list((dest / "test" / name).iterdir())) == 5
    assert (dest / "train" / "brushland or shrubland").is_dir()
