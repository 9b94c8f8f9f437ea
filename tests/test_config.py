"""The typed config: DESIGN §3 defaults, YAML + dotted overrides, coercion, unknown keys and validation."""

from __future__ import annotations

import json
import math

import pytest

from air_app.config import (AirConfig, config_from_dict, load_config, nest_dotted, PARADIGMS, SELECTION_RULES)
from air_app.errors import UserError


# --------------------------------------------------------------------------------------------------- defaults
def test_defaults_match_design():
    cfg = AirConfig()
    f, s, p, t, d, m = cfg.finetune, cfg.synthesis, cfg.pseudolabel, cfg.train, cfg.data, cfg.models
    # step 1: LoRA
    assert (f.rank, f.alpha, f.lr, f.steps, f.batch_size, f.captions) == (8, 8.0, 1e-4, 1000, 4, "domain")
    assert f.enabled is True
    # step 2-3: synthesis; K = ceil(M / 2)
    assert s.per_class == 64 and s.keep is None and cfg.keep_per_class == 32
    assert (s.steps, s.guidance) == (25, 7.5)
    # step 4-6
    assert (p.lam, p.rule, p.k_per_class, p.grip_rounds, p.grip_step) == (1.0, "topk", 16, 10, 0.1)
    # step 7-8 (GRIP defaults)
    assert (t.n_ctx, t.lr, t.momentum, t.weight_decay, t.batch_size, t.warmup_epochs, t.beta) == \
        (16, 0.1, 0.9, 0.1, 16, 5, 1.0)
    assert t.epochs == 150
    # paradigms
    assert (d.paradigm, d.labeled_per_class, d.seen_fraction, d.test_fraction) == ("ul", 2, 0.62, 0.2)
    assert (m.mode, m.clip) == ("auto", "ViT-B-32:openai")
    assert m.diffusion == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert cfg.validate() is cfg


@pytest.mark.parametrize("m, k", [(1, 1), (2, 1), (3, 2), (64, 32), (120, 60), (121, 61)])
def test_keep_per_class_is_ceil_half_of_m(m, k):
    cfg = config_from_dict({"synthesis": {"per_class": m}})
    assert cfg.keep_per_class == k == math.ceil(m / 2)
    cfg.synthesis.keep = 1
    assert cfg.keep_per_class == 1


def test_effective_split_seed():
    cfg = AirConfig(seed=7)
    assert cfg.effective_split_seed == 7
    cfg.data.split_seed = 3
    assert cfg.effective_split_seed == 3


def test_to_json_round_trip():
    cfg = load_config(overrides={"pseudolabel.lam": 0.25, "data.templates": ["a {}.", "b {}"], "seed": 5})
    data = json.loads(cfg.to_json())
    assert data["pseudolabel"]["lam"] == 0.25 and data["seed"] == 5
    again = config_from_dict(data).validate()
    assert again == cfg


def test_default_instances_are_independent():
    a, b = AirConfig(), AirConfig()
    a.synthesis.per_class = 3
    assert b.synthesis.per_class == 64


# -------------------------------------------------------------------------------------------------- unknown keys
def test_unknown_top_level_key_named():
    with pytest.raises(UserError, match=r"unknown config key 'bogus'"):
        config_from_dict({"bogus": 1})


def test_unknown_nested_key_named_with_section():
    with pytest.raises(UserError, match=r"unknown config key 'synthesis\.per_klass'") as info:
        config_from_dict({"synthesis": {"per_klass": 3}})
    assert "per_class" in str(info.value)  # the known keys are listed


def test_unknown_key_via_overrides():
    with pytest.raises(UserError, match=r"pseudolabel\.lamda"):
        load_config(overrides={"pseudolabel.lamda": 0.5})


def test_section_given_a_scalar():
    with pytest.raises(UserError, match=r"'models' is a section"):
        config_from_dict({"models": "tiny"})


def test_non_mapping_config_rejected():
    with pytest.raises(UserError, match="mapping"):
        config_from_dict(["seed", 1])  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------------- YAML loading
def test_yaml_then_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("seed: 3\nsynthesis:\n  per_class: 10\n  keep: 4\npseudolabel:\n  lam: 0.5\n  rule: all\n"
                 "data:\n  templates: ['a photo of a {}.', 'art of the {}']\n  paradigm: ssl\n", encoding="utf-8")
    cfg = load_config(y, {"pseudolabel.lam": "2", "train.prompt": "visual"})
    assert cfg.seed == 3
    assert (cfg.synthesis.per_class, cfg.synthesis.keep, cfg.keep_per_class) == (10, 4, 4)
    assert cfg.pseudolabel.lam == 2.0 and isinstance(cfg.pseudolabel.lam, float)  # override beats the file
    assert cfg.pseudolabel.rule == "all"
    assert cfg.data.templates == ["a photo of a {}.", "art of the {}"]
    assert cfg.data.paradigm == "ssl" and cfg.train.prompt == "visual"
    # untouched keys keep their defaults
    assert cfg.finetune.rank == 8 and cfg.pseudolabel.k_per_class == 16


def test_empty_yaml_is_defaults(tmp_path):
    y = tmp_path / "empty.yaml"
    y.write_text("", encoding="utf-8")
    assert load_config(y) == AirConfig()


def test_missing_yaml(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("seed: [1, 2\n  : :\n", encoding="utf-8")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(y)


def test_non_utf8_yaml(tmp_path):
    y = tmp_path / "latin.yaml"
    y.write_bytes("data:\n  domain_caption: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(y)


def test_yaml_unknown_key(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  epochz: 3\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"train\.epochz"):
        load_config(y)


def test_yaml_validation_runs(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("synthesis:\n  per_class: 4\n  keep: 5\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"synthesis\.keep"):
        load_config(y)


# --------------------------------------------------------------------------------------------------- coercion
@pytest.mark.parametrize("key, raw, expected", [
    ("seed", "3", 3), ("seed", 3.0, 3), ("seed", "4.0", 4), ("synthesis.per_class", "12", 12),
    ("pseudolabel.lam", "1.5", 1.5), ("pseudolabel.lam", 2, 2.0), ("finetune.lr", "1e-3", 1e-3),
    ("finetune.enabled", "false", False), ("finetune.enabled", "No", False), ("finetune.enabled", "on", True),
    ("finetune.enabled", "1", True), ("finetune.enabled", False, False), ("finetune.resolution", "256", 256),
    ("finetune.resolution", None, None), ("synthesis.keep", None, None), ("data.images", 123, "123"),
    ("data.templates", "a {}", ["a {}"]), ("data.classes", ["a", 1], ["a", "1"]),
])
def test_override_coercion(key, raw, expected):
    cfg = load_config(overrides={key: raw})
    section, _, name = key.rpartition(".")
    value = getattr(getattr(cfg, section) if section else cfg, name)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("key, raw, words", [
    ("seed", "three", "seed must be an integer"),
    ("seed", 1.5, "seed must be an integer"),
    ("seed", True, "seed must be an integer"),
    ("seed", [1], "seed must be an integer"),
    ("synthesis.per_class", "2.5", "synthesis.per_class must be an integer"),
    ("pseudolabel.lam", "lots", "pseudolabel.lam must be a number"),
    ("pseudolabel.lam", True, "pseudolabel.lam must be a number"),
    ("pseudolabel.lam", [1.0], "pseudolabel.lam must be a number"),
    ("finetune.enabled", "maybe", "finetune.enabled must be true or false"),
    ("finetune.enabled", 2, "finetune.enabled must be true or false"),
    ("models.clip", {"a": 1}, "models.clip must be a string"),
    ("models.clip", None, "models.clip cannot be empty"),
    ("data.templates", 5, "data.templates must be a list"),
])
def test_bad_types_rejected(key, raw, words):
    with pytest.raises(UserError) as info:
        load_config(overrides={key: raw})
    assert words in str(info.value)


def test_nest_dotted():
    assert nest_dotted({"a.b": 1, "a.c": 2, "d": 3, "x.y.z": 4}) == {"a": {"b": 1, "c": 2}, "d": 3,
                                                                       "x": {"y": {"z": 4}}}
    assert nest_dotted({}) == {}


def test_nest_dotted_conflict_is_user_error():
    with pytest.raises(UserError, match="models"):
        nest_dotted({"models": "tiny", "models.clip": "x"})
    with pytest.raises(UserError, match="models"):
        nest_dotted({"models.clip": "x", "models": "tiny"})


# ------------------------------------------------------------------------------------------------- validation
def _invalid(overrides: dict, key: str) -> str:
    with pytest.raises(UserError) as info:
        load_config(overrides=overrides)
    msg = str(info.value)
    assert key in msg, msg
    return msg


@pytest.mark.parametrize("key", [
    "synthesis.per_class", "synthesis.steps", "synthesis.batch_size", "finetune.rank", "finetune.steps",
    "finetune.batch_size", "finetune.checkpoint_every", "pseudolabel.k_per_class", "pseudolabel.grip_rounds",
    "train.epochs", "train.batch_size", "train.n_ctx", "data.labeled_per_class",
])
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_counts(key, value):
    msg = _invalid({key: value}, key)
    assert "positive" in msg and str(value) in msg


@pytest.mark.parametrize("value", [0, -2])
def test_keep_non_positive(value):
    _invalid({"synthesis.keep": value}, "synthesis.keep")


def test_keep_greater_than_m():
    msg = _invalid({"synthesis.per_class": 4, "synthesis.keep": 5}, "synthesis.keep")
    assert "K=5" in msg and "M=4" in msg
    assert load_config(overrides={"synthesis.per_class": 4, "synthesis.keep": 4}).keep_per_class == 4


@pytest.mark.parametrize("key", ["pseudolabel.lam", "train.beta"])
@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_lambda_beta_range(key, value):
    _invalid({key: value}, key)


@pytest.mark.parametrize("key", ["pseudolabel.lam", "train.beta"])
def test_lambda_beta_zero_ok(key):
    cfg = load_config(overrides={key: 0})
    assert (cfg.pseudolabel.lam if key == "pseudolabel.lam" else cfg.train.beta) == 0.0


@pytest.mark.parametrize("key", ["finetune.resolution", "synthesis.resolution"])
@pytest.mark.parametrize("value", [0, -8, 100, 513])
def test_resolution_multiple_of_8(key, value):
    msg = _invalid({key: value}, key)
    assert "multiple of 8" in msg


@pytest.mark.parametrize("key", ["finetune.resolution", "synthesis.resolution"])
def test_resolution_ok(key):
    load_config(overrides={key: 64})
    load_config(overrides={key: 512})


@pytest.mark.parametrize("templates", [["a photo"], ["a {} and a {}"], ["{}", "no slot"]])
def test_templates_need_exactly_one_slot(templates):
    msg = _invalid({"data.templates": templates}, "template")
    assert "exactly one" in msg


def test_templates_empty_list():
    _invalid({"data.templates": []}, "data.templates")


def test_templates_ok():
    assert load_config(overrides={"data.templates": ["{}", "a {} photo."]}).data.templates == ["{}", "a {} photo."]


@pytest.mark.parametrize("key, value", [
    ("data.paradigm", "zsl"), ("data.paradigm", "UL"), ("pseudolabel.rule", "best"), ("models.mode", "cloud"),
    ("train.prompt", "both"), ("finetune.captions", "class"), ("data.template_style", "fancy"),
])
def test_bad_names(key, value):
    msg = _invalid({key: value}, key)
    assert repr(value) in msg


@pytest.mark.parametrize("paradigm", PARADIGMS)
def test_paradigms_ok(paradigm):
    assert load_config(overrides={"data.paradigm": paradigm}).data.paradigm == paradigm


@pytest.mark.parametrize("rule", SELECTION_RULES)
def test_rules_ok(rule):
    assert load_config(overrides={"pseudolabel.rule": rule}).pseudolabel.rule == rule


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan")])
def test_test_fraction_range(value):
    _invalid({"data.test_fraction": value}, "data.test_fraction")


@pytest.mark.parametrize("value", [0.0, 0.5, 0.99])
def test_test_fraction_ok(value):
    assert load_config(overrides={"data.test_fraction": value}).data.test_fraction == value


@pytest.mark.parametrize("value", [0.0, 1.0, -0.5, 2])
def test_seen_fraction_range(value):
    _invalid({"data.seen_fraction": value}, "data.seen_fraction")


@pytest.mark.parametrize("value", [0.0, 1.5, -0.1])
def test_grip_step_range(value):
    _invalid({"pseudolabel.grip_step": value}, "pseudolabel.grip_step")


@pytest.mark.parametrize("key", ["finetune.lr", "train.lr", "finetune.alpha"])
@pytest.mark.parametrize("value", [0, -1e-4, float("nan")])
def test_learning_rates_positive(key, value):
    _invalid({key: value}, key)


@pytest.mark.parametrize("key, value", [("train.momentum", 1.0), ("train.momentum", -0.1),
                                        ("train.weight_decay", -0.1), ("train.warmup_epochs", -1)])
def test_optimiser_ranges(key, value):
    _invalid({key: value}, key)


def test_paradigm_weight_and_guidance():
    _invalid({"train.paradigm_weight": -1}, "train.paradigm_weight")
    _invalid({"synthesis.guidance": -0.5}, "synthesis.guidance")
    cfg = load_config(overrides={"train.paradigm_weight": 0, "synthesis.guidance": 0})
    assert cfg.train.paradigm_weight == 0.0 and cfg.synthesis.guidance == 0.0


def test_validate_on_direct_mutation():
    cfg = AirConfig()
    cfg.pseudolabel.lam = -1
    with pytest.raises(UserError, match=r"pseudolabel\.lam"):
        cfg.validate()
