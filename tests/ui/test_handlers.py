"""The web app's event handlers, called directly (no server): results, persistence and visible errors."""

import io
import shutil
import threading
import time
import zipfile
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from air_app.cli import main
from air_app.engine.context import Hooks
from air_app.engine.studio import get_studio
from air_app.ui import labels_tab, results_tab, setup_tab, synth_tab, train_tab
from air_app.ui.app import build_app, load_settings, restore_session
from air_app.ui.common import AppOptions
from air_app.ui.jobs import SLOT, JobSlot

CLASSES = "red circle\nblue square\ngreen triangle\nstriped texture"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("uiroot")


@pytest.fixture(scope="module")
def options(root):
    return AppOptions(root=root)


@pytest.fixture(scope="module")
def ws(root, demo_images):
    """A demo workspace inside the allowed root: samples generated, pseudo-labels ready."""
    images = root / "images"
    shutil.copytree(demo_images, images)
    path = root / "ws"
    assert main(["run", "--images", str(images), "--classes", str(demo_images.parent / "classes.txt"),
                 "--workspace", str(path), "--models", "tiny", "--no-finetune", "--synthetic-per-class", "4",
                 "--keep", "2", "--gen-steps", "2", "--k-per-class", "5", "-q"]) == 0
    return str(path)


def _drain(gen):
    out = None
    for out in gen:
        pass
    return out


def _select(index):
    return gr.SelectData(target=None, data={"index": index, "value": None, "selected": True})


# ------------------------------------------------------------------------------------------------- setup
def test_create_workspace_from_a_server_folder(options, root, demo_images):
    images = root / "setup_images"
    shutil.copytree(demo_images, images)
    ws, status, banner = setup_tab.create_workspace(options, "ws_setup", CLASSES, "a photo of a {}.", "", str(images),
                                                    None, "ssl", 2, 0.62, 0.2, "tiny")
    assert ws == str(root / "ws_setup")
    assert "4 classes" in status and "SSL" in status and "8 labeled" in status
    assert "OFFLINE TINY MODELS" in banner
    again = setup_tab.open_workspace(options, "ws_setup")
    assert again[3].splitlines() == CLASSES.splitlines() and again[5] == "ssl"


def test_create_workspace_from_an_uploaded_zip(options, root, demo_images):
    buf = root / "upload.zip"
    with zipfile.ZipFile(buf, "w") as z:
        for p in list(demo_images.rglob("*.jpg"))[::4]:
            z.write(p, f"{p.parent.name}/{p.name}")
    _, status, _ = setup_tab.create_workspace(options, "ws_zip", CLASSES, "", "", "", [str(buf)], "ul", 2, 0.62,
                                              0.0, "tiny")
    assert "25 training" in status
    assert list((root / "ws_zip" / "uploads").iterdir())


@pytest.mark.parametrize("case, message", [
    ("no_classes", "no class names"),
    ("duplicates", "twice"),
    ("outside_root", "outside the allowed folder"),
    ("workspace_outside_root", "outside the allowed folder"),
    ("no_images", "no images"),
    ("escaping_zip", "escapes its folder"),
    ("not_an_image", "not an image or a zip"),
    ("empty_folder", "is empty"),
])
def test_setup_errors_are_visible(options, root, demo_images, case, message):
    classes, images, uploads, ws_name = CLASSES, str(demo_images), None, "ws_bad"
    if case == "no_classes":
        classes = "  \n"
    elif case == "duplicates":
        classes = "red circle\nblue square\nRed Circle"
    elif case == "outside_root":
        images = "/etc"
    elif case == "workspace_outside_root":
        ws_name = "/tmp/../etc/ws"
    elif case == "no_images":
        images = ""
    elif case == "escaping_zip":
        z = root / "evil.zip"
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr("../evil.jpg", b"x")
        uploads, images = [str(z)], ""
    elif case == "not_an_image":
        t = root / "notes.txt"
        t.write_text("hello")
        uploads, images = [str(t)], ""
    elif case == "empty_folder":
        (root / "empty").mkdir(exist_ok=True)
        images = str(root / "empty")
    if case not in ("outside_root",) and images == str(demo_images):
        images = str(root / "images_for_errors")
        if not Path(images).exists():
            shutil.copytree(demo_images, images)
    with pytest.raises(gr.Error, match=message):
        setup_tab.create_workspace(options, ws_name, classes, "", "", images, uploads, "ul", 2, 0.62, 0.2, "tiny")
    assert not (root / "evil.jpg").exists()
    assert not (root / ws_name / "workspace.db").exists() if not ws_name.startswith("/") else True


def test_open_workspace_errors(options, root):
    (root / "plain").mkdir(exist_ok=True)
    with pytest.raises(gr.Error, match="not an AiR workspace"):
        setup_tab.open_workspace(options, "plain")


def test_preset_fills_classes_and_templates():
    classes, templates = setup_tab.apply_preset("eurosat")
    assert len(classes.splitlines()) == 10 and "{}" in templates


# --------------------------------------------------------------------------------------------- synthesize
def test_gallery_click_prunes_and_restores_persistently(ws):
    items, ids, counts, _ = synth_tab.gallery_for(ws, "red circle")
    assert len(items) == 4 and len(ids) == 4 and "2 kept / 2 pruned" in counts
    first_kept = next(i for i, (_, caption) in enumerate(items) if caption.startswith("✓"))
    items, ids2, counts, _ = synth_tab.toggle_sample(ws, "red circle", ids, _select(first_kept))
    assert items[first_kept][1].startswith("✗ pruned (manual)") and "1 kept / 3 pruned" in counts
    reopened = [s for s in get_studio(ws).samples() if s.id == ids[first_kept]][0]
    assert reopened.kept is False and reopened.manual is False
    items, _, counts, _ = synth_tab.toggle_sample(ws, "red circle", ids2, _select(first_kept))
    assert items[first_kept][1].startswith("✓ kept (manual)")


def test_keep_k_in_one_class_and_everywhere(ws):
    items, _, counts, _ = synth_tab.keep_k(ws, "blue square", 3, False)
    assert "3 kept / 1 pruned" in counts
    items, _, counts, _ = synth_tab.keep_k(ws, "blue square", 1, True)
    status = get_studio(ws).status()
    assert all(row["kept"] == 1 for row in status["per_class"].values())
    synth_tab.keep_k(ws, "blue square", 2, True)
    with pytest.raises(gr.Error, match="positive"):
        synth_tab.keep_k(ws, "blue square", 0, True)


def test_generation_job_regenerates_a_class_with_a_custom_prompt(ws):
    status = _drain(synth_tab.run_regenerate(ws, "green triangle", "a sketch of a green triangle", None, 4, 2, 2))
    assert "finished" in status
    samples = get_studio(ws).samples(2)
    assert len(samples) == 4 and all(s.prompt == "a sketch of a green triangle" for s in samples)


def test_second_job_is_refused_while_one_runs(ws):
    started = threading.Event()
    release = threading.Event()

    def slow(hooks):
        started.set()
        release.wait(10)
        return "ok"

    job = SLOT.start("slow job", get_studio(ws).root, slow)
    started.wait(5)
    try:
        with pytest.raises(gr.Error, match="another job is running"):
            _drain(synth_tab.run_generate(ws, None, None, None, None))
    finally:
        release.set()
        job.done.wait(10)


def test_cancel_stops_generation_and_a_rerun_resumes(ws):
    studio = get_studio(ws)
    gen = synth_tab.run_generate(ws, None, 12, 2, 2)
    first = next(gen)
    assert "running" in first
    deadline = time.time() + 60
    while time.time() < deadline and len(studio.samples()) < 18:
        time.sleep(0.05)
    assert "Cancelling" in synth_tab.cancel_job(ws)
    status = _drain(gen)
    assert "cancelled" in status
    n = len(studio.samples())
    assert n < 48
    status = _drain(synth_tab.run_generate(ws, None, 12, 2, 2))
    assert "finished" in status and len(studio.samples()) == 48
    pairs = [(s.class_idx, s.id) for s in studio.samples()]
    assert len(set(pairs)) == 48


def test_invalid_settings_are_refused_before_a_job_starts(ws):
    with pytest.raises(gr.Error, match="cannot exceed"):
        _drain(synth_tab.run_generate(ws, None, 4, 9, 2))
    assert SLOT.running() is None


# -------------------------------------------------------------------------------------------- pseudo-labels
def test_moving_lambda_refuses_and_changes_the_metrics(ws):
    m0, table, items, rows = labels_tab.refuse(ws, 0.0, 5, "topk")
    m3, _, _, _ = labels_tab.refuse(ws, 3.0, 5, "topk")
    assert m0 != m3 and "Pseudo-label accuracy" in m0
    assert len(table) == 4 and len(items) == len(rows)
    cfg = get_studio(ws).status()["config"]["pseudolabel"]
    assert cfg["lam"] == 3.0 and cfg["k_per_class"] == 5
    with pytest.raises(gr.Error, match="positive"):
        labels_tab.refuse(ws, 1.0, 0, "topk")


def test_confusion_charts_and_inspector(ws):
    cms = labels_tab.charts(ws, 1.0, 5, "topk")
    assert all(isinstance(im, Image.Image) and im.size[0] > 100 for im in cms)
    original, cam_t, cam_a, cam_f, md = labels_tab.inspect(ws, 3, 1.0, 5, None)
    assert cam_t.size == cam_a.size == cam_f.size == original.size
    assert "Text classifier" in md and "Auxiliary classifier" in md and "Fused" in md
    with pytest.raises(gr.Error, match="does not exist"):
        labels_tab.inspect(ws, 10_000, 1.0, 5, None)


def test_pick_disagreement_maps_the_click_to_a_row():
    assert labels_tab.pick_disagreement([7, 9, 11], _select(1)) == 9


# ------------------------------------------------------------------------------------------- train / results
def test_training_streams_the_plot_and_ends_with_results(ws):
    updates = list(train_tab.run_training(ws, "textual", "topk", 2, 0.1, 1.0, 10, False))
    status, frame, final = updates[-1]
    assert "finished" in status and "Test accuracy" in final
    assert set(frame["metric"]) >= {"loss", "train accuracy"} and frame["step"].max() == 2
    summary, rows, files, cm = results_tab.results(ws)
    assert "Test accuracy" in summary and len(rows) >= 1
    names = {Path(f).name for f in files}
    assert {"prompt.safetensors", "prompt.safetensors.json", "predictions.csv", "air_report.zip"} <= names
    with zipfile.ZipFile(next(f for f in files if f.endswith(".zip"))) as z:
        assert "report/metrics.json" in z.namelist()


def test_training_settings_are_validated(ws):
    with pytest.raises(gr.Error, match="train.epochs"):
        _drain(train_tab.run_training(ws, "textual", "topk", 0, 0.1, 1.0, 10, False))
    with pytest.raises(gr.Error, match="train.beta"):
        _drain(train_tab.run_training(ws, "textual", "topk", 1, 0.1, -1.0, 10, False))


def test_job_slot_reports_failures_and_cancellation():
    slot = JobSlot()
    job = slot.start("bad", "/w", lambda hooks: (_ for _ in ()).throw(ValueError("boom")))
    job.done.wait(5)
    assert job.state == "failed" and "boom" in job.status()

    def loop(hooks: Hooks):
        while True:
            hooks.check_stop()
            time.sleep(0.01)

    job = slot.start("loop", "/w", loop)
    assert slot.cancel("/w")
    job.done.wait(5)
    assert job.state == "cancelled" and "resume" in job.status()


def test_app_builds_and_restores_the_session(options, ws):
    demo = build_app(AppOptions(root=options.root, default_workspace=ws))
    assert isinstance(demo, gr.Blocks)
    opts = AppOptions(root=options.root, default_workspace=ws)
    path, banner, status, field, classes, templates, paradigm = restore_session(opts, None)
    assert path == ws and "OFFLINE TINY" in banner and "4 classes" in status
    assert classes.splitlines()[0] == "red circle" and paradigm == "ul" and "{}" in templates
    assert ws in opts.served and any(p.endswith("images") for p in opts.served), "workspace and its images served"
    assert str(options.root) not in opts.served, "the rest of the root is not served"
    nothing = restore_session(AppOptions(root=options.root), "/etc")
    assert nothing[0] is None
    settings = load_settings(ws)
    assert settings[1] == 12  # M from the last generation


def test_a_png_from_the_results_is_readable(ws):
    _, _, _, cm = results_tab.results(ws)
    assert cm is None or Image.open(io.BytesIO(Path(cm).read_bytes())).size[0] > 0
