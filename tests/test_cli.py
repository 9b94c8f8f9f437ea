"""End-to-end: the `run` command on 100 images with tiny models, its report files, resume, and bad input."""

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from air_app.cli import main

from .conftest import REPO

FAST = ["--models", "tiny", "--lora-steps", "4", "--lora-batch", "2", "--gen-steps", "3", "-q"]


def run_cli(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def ran(demo_images, classes_file, tmp_path_factory):
    """One full run: M=6, K=3, topk K=5, λ=0.7."""
    ws = tmp_path_factory.mktemp("ws") / "workspace"
    args = ["run", "--images", demo_images, "--classes", classes_file, "--workspace", ws, "--synthetic-per-class", 6,
            "--keep", 3, "--k-per-class", 5, "--lam", 0.7, *FAST]
    assert main([str(a) for a in args]) == 0
    return ws, args


def _report(ws):
    rows = list(csv.DictReader(open(ws / "report" / "predictions.csv", encoding="utf-8")))
    probs = np.load(ws / "report" / "probs.npz", allow_pickle=False)
    metrics = json.loads((ws / "report" / "metrics.json").read_text())
    return rows, probs, metrics


def test_run_writes_every_report_file(ran):
    ws, _ = ran
    for name in ("metrics.json", "predictions.csv", "probs.npz", "confusion_text.png", "confusion_aux.png",
                 "confusion_fused.png"):
        assert (ws / "report" / name).stat().st_size > 0, name
    rows, probs, metrics = _report(ws)
    assert len(rows) == 100  # one row per real image (train and test)
    assert set(probs.files) == {"text", "aux", "fused", "classes", "lam"}
    assert probs["text"].shape == (100, 4)
    assert metrics["paradigm"] == "ul" and metrics["lam"] == 0.7
    assert metrics["counts"]["synthetic"] == 24 and metrics["counts"]["synthetic_kept"] == 12
    assert set(metrics["timings"]) >= {"init", "finetune", "synthesize", "select", "pseudolabel"}
    assert metrics["models"]["is_tiny"] is True


def test_probs_satisfy_the_fusion_formula_exactly(ran):
    _, probs, _ = _report(ran[0])
    lam = float(probs["lam"])
    np.testing.assert_array_equal(probs["fused"], (probs["text"] + lam * probs["aux"]) / (1 + lam))
    for key in ("text", "aux", "fused"):
        np.testing.assert_allclose(probs[key].sum(1), 1.0, atol=1e-9)


def test_predictions_csv_agrees_with_probs(ran):
    rows, probs, _ = _report(ran[0])
    classes = list(probs["classes"])
    for i, row in enumerate(rows):
        for key in ("text", "aux", "fused"):
            assert row[f"{key}_pred"] == classes[probs[key][i].argmax()]
            assert abs(float(row[f"{key}_conf"]) - probs[key][i].max()) < 1e-6
        assert row["pseudo_label"] == (row["fused_pred"] if row["selected"] == "1" else "")


def test_topk_selection_obeys_the_upl_rule(ran):
    rows, probs, metrics = _report(ran[0])
    k = metrics["k_per_class"]
    candidates = [i for i, r in enumerate(rows) if r["split"] == "train" and r["labeled"] == "0"]
    by_class: dict[str, list[int]] = {}
    for i in candidates:
        by_class.setdefault(rows[i]["fused_pred"], []).append(i)
    for cls, members in by_class.items():
        chosen = [i for i in members if rows[i]["selected"] == "1"]
        assert len(chosen) == min(k, len(members))
        if len(chosen) < len(members):
            worst_chosen = min(probs["fused"][i].max() for i in chosen)
            best_left = max(probs["fused"][i].max() for i in members if i not in chosen)
            assert worst_chosen >= best_left
    assert all(rows[i]["selected"] == "0" for i in range(len(rows)) if i not in candidates)
    assert metrics["counts"]["selected"] == sum(r["selected"] == "1" for r in rows)


def test_metrics_accuracies_match_the_csv(ran):
    rows, _, metrics = _report(ran[0])
    cand = [r for r in rows if r["split"] == "train" and r["labeled"] == "0"]
    for key in ("text", "aux", "fused"):
        acc = sum(r[f"{key}_pred"] == r["gt"] for r in cand) / len(cand)
        assert metrics["pseudolabel_accuracy"][key] == pytest.approx(acc)
    sel = [r for r in cand if r["selected"] == "1"]
    assert metrics["selected_accuracy"] == pytest.approx(sum(r["pseudo_label"] == r["gt"] for r in sel) / len(sel))


def test_second_run_recomputes_nothing(ran, capsys):
    ws, args = ran
    before = {p: p.stat().st_mtime_ns for p in (ws / "synthetic").rglob("*.png")}
    rc, out, _ = run_cli(args, capsys)
    assert rc == 0
    assert "init: workspace" in out and "skipped" in out
    assert "finetune: LoRA up to date" in out
    assert "nothing to generate" in out
    assert "0 computed" in out
    assert "features: 100 real images cached, 0 computed" in out
    after = {p: p.stat().st_mtime_ns for p in (ws / "synthetic").rglob("*.png")}
    assert before == after


def test_manual_prune_persists_and_changes_the_prototype(ran, capsys):
    from air_app.workspace import Workspace

    ws_dir, _ = ran
    ws = Workspace.open(ws_dir)
    kept = [r for r in ws.synthetic(0) if r.kept]
    ws.set_manual_keep([kept[0].id], False)
    rc, out, _ = run_cli(["select", "--workspace", ws_dir, "-q"], capsys)
    assert rc == 0 and "1 manual decisions" in out
    again = {r.id: r for r in Workspace.open(ws_dir).synthetic(0)}
    assert again[kept[0].id].kept is False and again[kept[0].id].auto_keep is True
    ws.set_manual_keep([kept[0].id], None)


def test_explain_writes_three_overlays(ran, capsys):
    ws, _ = ran
    rc, out, err = run_cli(["explain", "--workspace", ws, "--image", "3", "-q"], capsys)
    assert rc == 0, err
    stems = {p.name for p in (ws / "report" / "explain").glob("*_cam_*.png")}
    assert len(stems) == 3 and "top-5" in out


def test_evaluate_prints_a_per_class_table(ran, capsys):
    rc, out, _ = run_cli(["evaluate", "--workspace", ran[0], "-q"], capsys)
    assert rc == 0
    assert "pseudo-label accuracy" in out and "red circle" in out


def _counts(db: Path):
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT class_idx, idx FROM synthetic").fetchall()
    finally:
        con.close()
    return rows


def test_sigkill_during_synthesis_then_resume_gives_exactly_m_per_class(demo_images, classes_file, tmp_path):
    ws = tmp_path / "ws"
    m = 10
    cmd = [sys.executable, "-m", "air_app", "run", "--images", str(demo_images), "--classes", str(classes_file),
           "--workspace", str(ws), "--synthetic-per-class", str(m), "--gen-batch", "1", "--no-finetune",
           "--models", "tiny", "--gen-steps", "6", "-q"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = ws / "workspace.db"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                n = len(_counts(db))
            except sqlite3.Error:
                n = 0
            if n >= 3:
                proc.send_signal(signal.SIGKILL)
                killed_at = n
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_at is not None and killed_at < 4 * m, "the run must be killed mid-synthesis"
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = _counts(db)
    assert len(rows) == len(set(rows)) == 4 * m
    for c in range(4):
        assert sorted(i for cc, i in rows if cc == c) == list(range(m))
    pngs = [p for p in (ws / "synthetic").rglob("*") if p.is_file()]
    assert len(pngs) == 4 * m and all(p.suffix == ".png" for p in pngs)


# ------------------------------------------------------------------------------------------------- bad input
def _bad(capsys, args):
    rc, out, err = run_cli(args, capsys)
    assert rc == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    return lines[0]


@pytest.fixture()
def classes4(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("red circle\nblue square\ngreen triangle\nstriped texture\n", encoding="utf-8")
    return p


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("case, expected", [
    ("missing_folder", "does not exist"),
    ("empty_folder", "is empty"),
    ("only_junk", "no usable images"),
    ("empty_classes", "is empty"),
    ("one_class", "only one class"),
    ("duplicate_classes", "twice"),
    ("blank_class", "blank class names"),
    ("folder_mismatch", "match no class name"),
    ("zero_m", "synthesis.per_class must be a positive integer"),
    ("negative_k", "pseudolabel.k_per_class must be a positive integer"),
    ("negative_lam", "λ"),
    ("k_greater_than_m", "cannot exceed"),
    ("unwritable_workspace", "cannot write to workspace"),
    ("real_offline", "real weights requested"),
    ("unknown_config_key", "unknown config key 'synthesis.per_klass'"),
    ("ssl_on_flat_folder", "needs labeled images"),
    ("not_an_int", "must be an integer"),
])
def test_bad_input_is_one_line_exit_2(case, expected, tmp_path, demo_images, classes4, capsys):
    images, classes, extra = demo_images, classes4, []
    if case == "missing_folder":
        images = tmp_path / "nope"
    elif case == "empty_folder":
        images = tmp_path / "empty"
        images.mkdir()
    elif case == "only_junk":
        images = tmp_path / "junk"
        images.mkdir()
        (images / "a.jpg").write_bytes(os.urandom(300))
        (images / "notes.txt").write_text("hello")
    elif case == "empty_classes":
        classes = _write(tmp_path, "c.txt", "\n\n")
    elif case == "one_class":
        classes = _write(tmp_path, "c.txt", "red circle\n")
    elif case == "duplicate_classes":
        classes = _write(tmp_path, "c.txt", "red circle\nblue square\nRed_Circle\n")
    elif case == "blank_class":
        classes = _write(tmp_path, "c.txt", "red circle\n   \nblue square\n")
    elif case == "folder_mismatch":
        classes = _write(tmp_path, "c.txt", "red circle\nblue square\ngreen triangle\nzebra\n")
    elif case == "zero_m":
        extra = ["--synthetic-per-class", "0"]
    elif case == "negative_k":
        extra = ["--k-per-class", "-1"]
    elif case == "negative_lam":
        extra = ["--lam", "-0.5"]
    elif case == "k_greater_than_m":
        extra = ["--synthetic-per-class", "4", "--keep", "5"]
    elif case == "real_offline":
        extra = ["--models", "real"]
    elif case == "unknown_config_key":
        extra = ["--config", _write(tmp_path, "c.yaml", "synthesis:\n  per_klass: 3\n")]
    elif case == "ssl_on_flat_folder":
        images = tmp_path / "flat"
        images.mkdir()
        for p in list(demo_images.rglob("*.jpg"))[:8]:
            (images / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
        extra = ["--paradigm", "ssl"]
    elif case == "not_an_int":
        extra = ["--synthetic-per-class", "many"]
    workspace = tmp_path / "ws"
    if case == "unwritable_workspace":
        blocker = _write(tmp_path, "a_file", "x")
        workspace = blocker / "ws"
    models = [] if case == "real_offline" else ["--models", "tiny"]
    line = _bad(capsys, ["run", "--images", images, "--classes", classes, "--workspace", workspace, *models,
                         "--no-finetune", "-q", *extra])
    assert expected in line


def test_bad_input_leaves_an_existing_workspace_intact(ran, tmp_path, capsys):
    ws, args = ran
    db = ws / "workspace.db"
    before = (_counts(db), sqlite3.connect(db).execute("SELECT COUNT(*), SUM(labeled) FROM images").fetchone())
    classes = _write(tmp_path, "c.txt", "cat\ndog\n")
    _bad(capsys, ["run", "--images", args[2], "--classes", classes, "--workspace", ws, "--models", "tiny", "-q"])
    _bad(capsys, ["synthesize", "--workspace", ws, "--synthetic-per-class", "-3", "-q"])
    _bad(capsys, ["explain", "--workspace", ws, "--image", "/no/such.jpg", "-q"])
    after = (_counts(db), sqlite3.connect(db).execute("SELECT COUNT(*), SUM(labeled) FROM images").fetchone())
    assert before == after


def test_corrupt_files_are_skipped_and_listed(tmp_path, demo_images, classes4, capsys):
    images = tmp_path / "mixed"
    for p in list(demo_images.rglob("*.jpg"))[::5]:
        dest = images / p.parent.name / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    (images / "red_circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(100))
    (images / "blue_square" / "readme.txt").write_text("not an image")
    rc, out, err = run_cli(["init", "--images", images, "--classes", classes4, "--workspace", tmp_path / "ws",
                            "--models", "tiny", "-q"], capsys)
    assert rc == 0, err
    assert "skipped 2 files" in out and "broken.jpg" in out and "readme.txt" in out


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "air_app", "run", "--images", str(tmp_path / "missing"),
                           "--classes", str(tmp_path / "c.txt"), "--workspace", str(tmp_path / "ws")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: ")
    assert not (tmp_path / "ws").exists()


def test_pseudo_captions_finetune(demo_images, classes4, tmp_path, capsys):
    """finetune with `--captions pseudo`: the template filled with each image's zero-shot pseudo-label."""
    from air_app.engine.pipeline import open_context
    from air_app.engine.synth import lora_captions

    ws = tmp_path / "ws"
    rc, out, err = run_cli(["init", "--images", demo_images, "--classes", classes4, "--workspace", ws,
                            "--models", "tiny", "-q"], capsys)
    assert rc == 0, err
    ctx = open_context(str(ws), overrides={"finetune.captions": "pseudo"})
    images = ctx.ws.images(split="train")
    captions = lora_captions(ctx, images)
    allowed = {f"a photo of a {c}." for c in ctx.classes}
    assert len(captions) == len(images) and set(captions) <= allowed
    rc, out, err = run_cli(["finetune", "--workspace", ws, "--captions", "pseudo", "--lora-steps", "2", "-q"], capsys)
    assert rc == 0, err
    assert (ws / "lora" / "pytorch_lora_weights.safetensors").is_file()
