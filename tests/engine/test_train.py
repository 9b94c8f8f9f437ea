"""Prompt learning end to end on tiny models: schedules, resume, reproducibility, paradigms, and using the result."""

import json
import shutil
import sqlite3

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import air_app
from air_app.cli import main
from air_app.engine import pipeline
from air_app.engine.context import Hooks
from air_app.engine.train import ImageSource, PromptedClassifier, lr_factor
from air_app.errors import UserError

BASE = ["--models", "tiny", "--no-finetune", "--synthetic-per-class", "4", "--gen-steps", "2", "--k-per-class", "6",
        "-q"]


def _run(args):
    assert main([str(a) for a in args]) == 0


@pytest.fixture(scope="module")
def base_ws(demo_images, classes_file, tmp_path_factory):
    """A UL workspace with pseudo-labels and synthetic samples, no prompts yet."""
    ws = tmp_path_factory.mktemp("train") / "ul"
    _run(["run", "--images", demo_images, "--classes", classes_file, "--workspace", ws, *BASE])
    return ws


def _copy(ws, tmp_path, name="copy"):
    dest = tmp_path / name
    shutil.copytree(ws, dest)
    return dest


def _prompt(ws):
    return load_file(str(ws / "prompts" / "prompt.safetensors"))


def test_lr_schedule_warmup_then_cosine():
    assert [round(lr_factor(e, 10, 4), 4) for e in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert lr_factor(9, 10, 4) == pytest.approx(0.5 * (1 + np.cos(np.pi * 5 / 6)))
    assert lr_factor(0, 1, 5) == 1.0  # a single epoch still trains at the base rate


def test_textual_training_writes_prompt_metrics_and_runs(base_ws, tmp_path):
    ws = _copy(base_ws, tmp_path)
    _run(["train", "--workspace", ws, "--prompt", "textual", "--epochs", "3", "-q"])
    metrics = json.loads((ws / "report" / "metrics.json").read_text())
    final = metrics["final"]
    assert final["prompt"] == "textual" and 0 <= final["accuracy"] <= 1
    assert set(final["per_class"]) == {"red circle", "blue square", "green triangle", "striped texture"}
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert all("loss" in h and "train_acc" in h and "test_acc" in h for h in metrics["history"])
    manifest = json.loads((ws / "prompts" / "prompt.safetensors.json").read_text())
    assert manifest["prompt_type"] == "text" and manifest["n_ctx"] == 16 and len(manifest["classes"]) == 4
    assert _prompt(ws)["ctx"].shape == (16, 64)
    runs = (ws / "report" / "runs.jsonl").read_text().splitlines()
    run = json.loads(runs[-1])
    assert run["config"]["train"]["prompt"] == "textual" and run["seed"] == 0 and "torch" in run["versions"]
    assert (ws / "report" / "confusion_final.png").is_file()
    assert not (ws / "prompts" / "checkpoint").exists()


def test_same_seed_gives_identical_prompts(base_ws, tmp_path):
    a, b = _copy(base_ws, tmp_path, "a"), _copy(base_ws, tmp_path, "b")
    for ws in (a, b):
        _run(["train", "--workspace", ws, "--prompt", "textual", "--epochs", "2", "-q"])
    assert torch.equal(_prompt(a)["ctx"], _prompt(b)["ctx"])
    c = _copy(base_ws, tmp_path, "c")
    _run(["train", "--workspace", c, "--prompt", "textual", "--epochs", "2", "--seed", "5", "-q"])
    assert not torch.equal(_prompt(a)["ctx"], _prompt(c)["ctx"])


@pytest.mark.parametrize("prompt, rule", [("textual", "grip"), ("visual", "fixed")])
def test_kill_and_resume_equals_uninterrupted(base_ws, tmp_path, prompt, rule):
    overrides = {"train.prompt": prompt, "train.epochs": 2, "pseudolabel.rule": rule, "pseudolabel.grip_rounds": 3}
    full = _copy(base_ws, tmp_path, "full")
    ctx = pipeline.open_context(str(full), overrides=overrides)
    pipeline.train(ctx)
    part = _copy(base_ws, tmp_path, "part")
    epochs_seen = []

    def stop():
        return len(epochs_seen) >= 3  # interrupted in the middle of round 2

    ctx = pipeline.open_context(str(part), overrides=overrides,
                                hooks=Hooks(say=lambda m: None, should_stop=stop, on_epoch=epochs_seen.append))
    with pytest.raises(InterruptedError):
        pipeline.train(ctx)
    state = json.loads((part / "prompts" / "checkpoint" / "state.json").read_text())
    assert (state["round"], state["epoch"]) == (1, 1)
    ctx = pipeline.open_context(str(part), overrides=overrides, hooks=Hooks(say=lambda m: None))
    pipeline.train(ctx)
    a, b = _prompt(full), _prompt(part)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    hist_full = json.loads((full / "prompts" / "history.json").read_text())
    hist_part = json.loads((part / "prompts" / "history.json").read_text())
    assert [h["loss"] for h in hist_full] == pytest.approx([h["loss"] for h in hist_part], abs=1e-6)
    assert len(hist_full) == 6


def test_incompatible_checkpoint_message(base_ws, tmp_path, capsys):
    ws = _copy(base_ws, tmp_path)
    seen = []
    hooks = Hooks(say=lambda m: None, should_stop=lambda: len(seen) >= 1, on_epoch=seen.append)
    ctx = pipeline.open_context(str(ws), overrides={"train.prompt": "textual", "train.epochs": 3}, hooks=hooks)
    with pytest.raises(InterruptedError):
        pipeline.train(ctx)
    assert (ws / "prompts" / "checkpoint" / "state.json").is_file()
    rc = main(["train", "--workspace", str(ws), "--prompt", "textual", "--epochs", "5", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "different configuration" in err and "--fresh" in err and err.count("\n") == 1
    assert main(["train", "--workspace", str(ws), "--prompt", "textual", "--epochs", "2", "--fresh", "-q"]) == 0


def test_cached_features_give_the_same_logits_as_encoding(base_ws):
    ctx = pipeline.open_context(str(base_ws), overrides={"train.prompt": "textual"}, hooks=Hooks(say=lambda m: None))
    from air_app.engine.labeling import load_labeling_data

    data = load_labeling_data(ctx)
    model = PromptedClassifier(ctx, data, "textual", 16, seed=3)
    rows = np.arange(0, 40, 3)
    cached = model.logits(ImageSource(ctx, data, visual=False).batch("real", rows))
    pixels = ImageSource(ctx, data, visual=True).batch("real", rows)
    encoded = model.logits(ctx.clip().encode_images(pixels))
    torch.testing.assert_close(cached, encoded, rtol=0, atol=1e-5)


def test_trzsl_harmonic_mean_and_seen_classes(demo_images, classes_file, tmp_path):
    ws = tmp_path / "trzsl"
    _run(["run", "--images", demo_images, "--classes", classes_file, "--workspace", ws, "--paradigm", "trzsl",
          "--prompt", "textual", "--epochs", "2", *BASE])
    final = json.loads((ws / "report" / "metrics.json").read_text())["final"]
    s, u = final["seen_accuracy"], final["unseen_accuracy"]
    assert final["harmonic_mean"] == pytest.approx(0 if s + u == 0 else 2 * s * u / (s + u))
    con = sqlite3.connect(ws / "workspace.db")
    seen = [r[0] for r in con.execute("SELECT idx FROM classes WHERE seen=1")]
    assert len(seen) == int(0.62 * 4)
    labeled_classes = {r[0] for r in con.execute("SELECT gt FROM images WHERE labeled=1")}
    assert labeled_classes == set(seen)
    probs = np.load(ws / "report" / "probs.npz")
    assert np.all(probs["fused"][:, seen] == 0), "TRZSL pseudo-labels are restricted to unseen classes"


def test_ssl_uses_exactly_n_labeled_per_class(demo_images, classes_file, tmp_path):
    ws = tmp_path / "ssl"
    _run(["run", "--images", demo_images, "--classes", classes_file, "--workspace", ws, "--paradigm", "ssl",
          "--labeled-per-class", "3", "--prompt", "visual", "--epochs", "1", *BASE])
    con = sqlite3.connect(ws / "workspace.db")
    counts = dict(con.execute("SELECT gt, COUNT(*) FROM images WHERE labeled=1 GROUP BY gt").fetchall())
    assert counts == {0: 3, 1: 3, 2: 3, 3: 3}
    assert con.execute("SELECT COUNT(*) FROM images WHERE labeled=1 AND split='test'").fetchone()[0] == 0


def test_load_classifier_matches_the_test_predictions(base_ws, tmp_path):
    from PIL import Image

    ws = _copy(base_ws, tmp_path)
    _run(["train", "--workspace", ws, "--prompt", "textual", "--epochs", "2", "-q"])
    clf = air_app.load_classifier(ws)
    rows = [line.split(",") for line in (ws / "report" / "test_predictions.csv").read_text().splitlines()[1:6]]
    preds = clf.predict([r[0] for r in rows])
    assert [p[0] for p in preds] == [r[2] for r in rows]
    probs = clf.probs([Image.open(rows[0][0])])
    assert probs.shape == (1, 4) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(UserError, match="does not exist"):
        clf.predict(["/no/such/image.jpg"])


def test_report_renders_runs_beside_published_numbers(base_ws, tmp_path, capsys):
    ws = _copy(base_ws, tmp_path)
    _run(["train", "--workspace", ws, "--prompt", "textual", "--epochs", "1", "-q"])
    capsys.readouterr()
    assert main(["report", str(ws), "--out", str(tmp_path / "r.md")]) == 0
    out = capsys.readouterr().out
    assert "| dataset | paradigm | prompt |" in out and "| UL | textual |" in out
    assert (tmp_path / "r.md").read_text() == out.rstrip("\n")


@pytest.mark.parametrize("args, expected", [
    (["--epochs", "0"], "train.epochs must be a positive integer"),
    (["--beta", "-1"], "train.beta"),
    (["--prompt", "sideways"], "train.prompt must be one of"),
])
def test_bad_training_input(base_ws, tmp_path, capsys, args, expected):
    ws = _copy(base_ws, tmp_path)
    rc = main(["train", "--workspace", str(ws), "--prompt", "textual", *args, "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and err.count("\n") == 1 and "Traceback" not in err


def test_protocol_config_runs_with_a_data_root(tmp_path):
    """configs/<preset>_<paradigm>_<prompt>.yaml + --data-root: the GPU-box entry point, shrunk to tiny models."""
    from PIL import Image

    from air_app.data.benchmarks import get_preset

    from ..conftest import REPO

    preset = get_preset("eurosat")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 1)):
        for c in preset.classes:
            folder = tmp_path / "data" / "eurosat" / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    ws = tmp_path / "ws"
    _run(["run", "--config", REPO / "configs" / "eurosat_trzsl_textual.yaml", "--data-root", tmp_path / "data",
          "--workspace", ws, "--models", "tiny", "--no-finetune", "--synthetic-per-class", "2", "--gen-steps", "2",
          "--epochs", "1", "--rule", "topk", "-q"])
    metrics = json.loads((ws / "report" / "metrics.json").read_text())
    assert metrics["paradigm"] == "trzsl" and metrics["counts"]["test"] == 10 and metrics["counts"]["train"] == 30
    assert metrics["final"]["harmonic_mean"] is not None
