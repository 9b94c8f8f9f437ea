"""Assemble the tabs into one Gradio app and launch it (binds 127.0.0.1 by default; no share link)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import gradio as gr

from ..engine.studio import get_studio
from ..errors import UserError
from . import labels_tab, results_tab, setup_tab, synth_tab, train_tab
from .common import CSS, AppOptions, banner_html, resolve_under

log = logging.getLogger("air_app.ui")


def restore_session(options: AppOptions, remembered: str | None):
    """On page load: reopen the workspace this browser used last (if it still exists), else the default one."""
    for candidate in (remembered, options.default_workspace):
        if not candidate:
            continue
        try:
            path = resolve_under(options, candidate, "workspace folder")
            status = get_studio(path).status()
        except UserError:
            continue
        options.serve(str(path), status["config"])
        return (str(path), banner_html(status), setup_tab.status_markdown(status), str(path),
                "\n".join(status["classes"]), "\n".join(status["templates"]), status["paradigm"])
    return (None, banner_html(None), "", options.default_workspace or "workspaces/my_task", gr.update(), gr.update(),
            gr.update())


def load_settings(ws: str | None):
    """The workspace's stored settings for the Synthesize, Pseudo-labels and Train tabs."""
    if not ws:
        return [gr.update()] * 9
    status = get_studio(ws).status()
    cfg, classes = status["config"], status["classes"]
    s, f, p, t = cfg["synthesis"], cfg["finetune"], cfg["pseudolabel"], cfg["train"]
    keep = s["keep"] if s["keep"] is not None else -(-s["per_class"] // 2)
    return (f["steps"], s["per_class"], keep, s["steps"], p["lam"], p["k_per_class"],
            p["rule"] if p["rule"] in ("topk", "all") else "topk", gr.update(choices=[""] + classes, value=""),
            t["epochs"] if t["epochs"] <= 50 else 5)


def build_app(options: AppOptions) -> gr.Blocks:
    with gr.Blocks(title="AiR Studio") as demo:
        browser_ws = gr.BrowserState(None, storage_key="air_studio_workspace")
        ws_state = gr.State(None)
        gr.Markdown("# AiR Studio\nAdapt CLIP to your images without labels: synthetic images from a LoRA-tuned "
                    "Stable Diffusion build an auxiliary classifier that sharpens CLIP's pseudo-labels "
                    "(AiR, CVPR 2025).")
        banner = gr.HTML(banner_html(None), elem_id="models-banner")
        with gr.Tabs():
            setup = setup_tab.build(options, ws_state, banner, browser_ws)
            synth = synth_tab.build(ws_state)
            labels = labels_tab.build(ws_state)
            train = train_tab.build(ws_state)
            results = results_tab.build(ws_state)
        settings_outputs = [*synth["settings"], labels["lam"], labels["k"], labels["rule"], labels["target"],
                            train["epochs"]]
        demo.load(lambda remembered: restore_session(options, remembered), browser_ws,
                  [ws_state, banner, setup["status"], setup["ws_path"], setup["classes"], setup["templates"],
                   setup["paradigm"]]) \
            .then(load_settings, ws_state, settings_outputs) \
            .then(synth["refresh"], synth["inputs"], synth["outputs"]) \
            .then(results["refresh"], ws_state, results["outputs"])
        ws_state.change(load_settings, ws_state, settings_outputs) \
            .then(synth["refresh"], synth["inputs"], synth["outputs"])
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python app.py", description="AiR Studio web app")
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                    help="bind address [127.0.0.1]; 0.0.0.0 exposes the app to the network")
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    ap.add_argument("--workspace", help="workspace opened by default")
    ap.add_argument("--root", default=os.environ.get("AIR_STUDIO_ROOT", "."),
                    help="server folders (images, workspaces) must be inside this folder [current directory]")
    ap.add_argument("--auth", help="user:pass required to log in")
    ap.add_argument("--share", action="store_true", help="create a public share link (off by default)")
    return ap.parse_args(argv)


def launch(argv=None, block: bool = True):
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    root = Path(args.root).expanduser().resolve()
    options = AppOptions(root=root, default_workspace=args.workspace,
                         extra_roots=[Path(__file__).resolve().parents[2] / "assets"])
    auth = None
    if args.auth:
        if ":" not in args.auth:
            raise SystemExit("error: --auth must be user:pass")
        auth = tuple(args.auth.split(":", 1))
    demo = build_app(options)
    demo.queue(default_concurrency_limit=1)
    options.served.extend(str(r.resolve()) for r in options.extra_roots)
    return demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                       allowed_paths=options.served, css=CSS, prevent_thread_lock=not block, quiet=not block,
                       footer_links=["gradio"], enable_monitoring=False, show_error=True)
