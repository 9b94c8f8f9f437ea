"""Setup tab: create or open a workspace — classes, templates, images, paradigm, models."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from ..data.benchmarks import get_preset, list_presets
from ..data.classes import read_classes_file
from ..engine.studio import get_studio, setup_workspace
from ..errors import UserError
from .common import AppOptions, banner_html, extract_uploads, resolve_under, user_errors


def status_markdown(status: dict) -> str:
    lines = [f"**Workspace** `{status['workspace']}`",
             f"**{len(status['classes'])} classes** · paradigm **{status['paradigm'].upper()}** · "
             f"{status['train_images']} training / {status['test_images']} test images"
             + (f" · {status['labeled']} labeled" if status["labeled"] else "")
             + ("" if status["has_ground_truth"] else " · no ground truth (unlabeled folder)")]
    if status["seen_classes"]:
        lines.append(f"Seen classes (TRZSL): {', '.join(status['seen_classes'])}")
    lines.append(f"Synthetic samples: {status['synthetic']} ({status['kept']} kept) · LoRA "
                 f"{'fine-tuned' if status['finetuned'] else 'not fine-tuned yet'} · prompts "
                 f"{'trained' if status['trained'] else 'not trained yet'}")
    if status["skipped_files"]:
        skipped = "; ".join(f"{Path(p).name} ({r})" for p, r in status["skipped_files"][:8])
        lines.append(f"Skipped {len(status['skipped_files'])} files: {skipped}")
    return "\n\n".join(lines)


def apply_preset(name: str | None):
    if not name:
        return gr.update(), gr.update()
    preset = get_preset(name)
    return "\n".join(preset.classes), "\n".join(preset.templates)


@user_errors
def load_classes_file(file: str | None) -> str:
    if not file:
        return gr.update()
    return "\n".join(read_classes_file(file))


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


@user_errors
def create_workspace(options: AppOptions, ws_path: str, classes_text: str, templates_text: str, preset: str | None,
                     images_dir: str, uploads: list[str] | None, paradigm: str, n_labeled: float,
                     seen_fraction: float, test_fraction: float, models: str):
    """Create (or update) the workspace; returns (workspace, status, banner)."""
    ws = resolve_under(options, ws_path, "workspace folder")
    classes = _lines(classes_text)
    if not classes:
        raise UserError("no class names: type them one per line, upload a classes file or pick a preset")
    templates = _lines(templates_text) or None
    if uploads:
        if (ws.exists() and not ws.is_dir()):
            raise UserError(f"workspace {ws} exists and is not a folder")
        images = extract_uploads(uploads, ws / "uploads" / time.strftime("%Y%m%d-%H%M%S"))
    elif images_dir and images_dir.strip():
        images = resolve_under(options, images_dir, "image folder")
    else:
        raise UserError("no images: enter a server folder or upload images (files or a zip)")
    studio = setup_workspace(ws, classes=classes, templates=templates, images=str(images), paradigm=paradigm,
                             labeled_per_class=int(n_labeled), seen_fraction=float(seen_fraction),
                             test_fraction=float(test_fraction), models=models, preset=preset or None)
    status = studio.status()
    options.serve(str(ws), status["config"])
    return str(ws), status_markdown(status), banner_html(status)


@user_errors
def open_workspace(options: AppOptions, ws_path: str):
    """Open an existing workspace; returns (workspace, status, banner, classes, templates, paradigm)."""
    ws = resolve_under(options, ws_path, "workspace folder")
    status = get_studio(ws).status()
    options.serve(str(ws), status["config"])
    return (str(ws), status_markdown(status), banner_html(status), "\n".join(status["classes"]),
            "\n".join(status["templates"]), status["paradigm"])


def build(options: AppOptions, ws_state: gr.State, banner: gr.HTML, browser_ws: gr.BrowserState):
    with gr.Tab("Setup", id="setup"):
        gr.Markdown("Create a workspace from class names and images, or open an existing one. Server folders must be "
                    f"inside `{options.root}`.")
        with gr.Row():
            ws_path = gr.Textbox(label="Workspace folder", value=options.default_workspace or "workspaces/my_task",
                                 elem_id="ws-path", scale=4)
            open_btn = gr.Button("Open workspace", elem_id="open-btn", scale=1)
        with gr.Row():
            with gr.Column():
                preset = gr.Dropdown([""] + list_presets(), value="", label="Benchmark preset (optional)",
                                     elem_id="preset")
                classes = gr.Textbox(label="Class names (one per line)", lines=8, elem_id="classes")
                classes_file = gr.File(label="…or upload a classes file", file_types=[".txt"], type="filepath")
                templates = gr.Textbox(label="Prompt templates (one per line, '{}' = class name)", lines=3,
                                       value="a photo of a {}.", elem_id="templates")
            with gr.Column():
                images_dir = gr.Textbox(label="Image folder on the server (ImageFolder tree gives ground truth)",
                                        elem_id="images-dir")
                uploads = gr.File(label="…or upload images / a zip", file_count="multiple", type="filepath",
                                  elem_id="uploads")
                paradigm = gr.Radio(["ul", "ssl", "trzsl"], value="ul", label="Paradigm", elem_id="paradigm")
                n_labeled = gr.Number(value=2, precision=0, label="SSL: labeled images per class")
                seen = gr.Slider(0.1, 0.9, value=0.62, step=0.01, label="TRZSL: fraction of seen classes")
                test_fraction = gr.Slider(0.0, 0.5, value=0.2, step=0.05, label="Test holdout (labeled folders)")
                models = gr.Radio(["auto", "tiny", "real"], value="auto", label="Models", elem_id="models")
        create_btn = gr.Button("Create / update workspace", variant="primary", elem_id="create-btn")
        status = gr.Markdown(elem_id="setup-status")

    preset.change(apply_preset, preset, [classes, templates])
    classes_file.upload(load_classes_file, classes_file, classes)
    create_btn.click(lambda *a: create_workspace(options, *a),
                     [ws_path, classes, templates, preset, images_dir, uploads, paradigm, n_labeled, seen,
                      test_fraction, models], [ws_state, status, banner]) \
        .then(lambda ws: ws, ws_state, browser_ws)
    open_btn.click(lambda p: open_workspace(options, p), ws_path, [ws_state, status, banner, classes, templates,
                                                                   paradigm]) \
        .then(lambda ws: ws, ws_state, browser_ws)
    return {"ws_path": ws_path, "status": status, "classes": classes, "templates": templates, "paradigm": paradigm}
