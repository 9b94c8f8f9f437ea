"""Train tab: prompt type, schedule, epochs, lr, β; start with a live loss/accuracy plot; cancel; resume."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..engine.studio import get_studio
from .common import pct, require_workspace, user_errors
from .jobs import SLOT
from .synth_tab import cancel_job, follow

PLOT_COLUMNS = ["step", "value", "metric"]
PLOT_METRICS = ("loss", "train accuracy", "test accuracy")


def history_frame(records: list[dict], epochs_per_round: int) -> pd.DataFrame:
    """Long-format table for the live plot: one row per (epoch, metric).

    The browser builds the chart once, from the first frame it draws, and afterwards only swaps the data, so that
    frame must already have numeric axes and every metric's name (for the colour scale): before the first epoch it
    holds one empty (NaN, not drawn) row per metric."""
    rows = []
    for r in records:
        step = r["round"] * epochs_per_round + r["epoch"]
        rows.append((step, r["loss"], "loss"))
        rows.append((step, r["train_acc"], "train accuracy"))
        if "test_acc" in r:
            rows.append((step, r["test_acc"], "test accuracy"))
    if not rows:
        rows = [(0, float("nan"), metric) for metric in PLOT_METRICS]
    return pd.DataFrame(rows, columns=PLOT_COLUMNS).astype({"step": "int64", "value": "float64", "metric": "str"})


def final_markdown(final: dict | None) -> str:
    if not final:
        return ""
    text = (f"**Test accuracy {pct(final.get('accuracy'))}** with the learned {final.get('prompt')} prompt "
            f"(zero-shot CLIP {pct(final.get('zero_shot_accuracy'))})")
    if final.get("harmonic_mean") is not None:
        text += (f"\n\nTRZSL: seen {pct(final['seen_accuracy'])} · unseen {pct(final['unseen_accuracy'])} · "
                 f"harmonic mean **{pct(final['harmonic_mean'])}**")
    return text


@user_errors
def run_training(ws, prompt, rule, epochs, lr, beta, rounds, fresh, progress=gr.Progress()):
    """Start training in the shared job slot; stream status, the live plot and, at the end, the final metrics."""
    ws = require_workspace(ws)
    studio = get_studio(ws)
    overrides = {"train.prompt": prompt, "pseudolabel.rule": rule, "train.epochs": int(epochs), "train.lr": float(lr),
                 "train.beta": float(beta), "pseudolabel.grip_rounds": int(rounds), "train.resume": not fresh}
    studio.context(overrides=overrides)  # validate first
    job = SLOT.start("prompt training", studio.root, lambda hooks: studio.train(hooks, overrides))
    for status in follow(job, progress):
        yield status, history_frame(list(job.epochs), int(epochs)), final_markdown(
            job.result if isinstance(job.result, dict) else None)


def cancel_training(ws):
    return cancel_job(ws, "training stops after the current epoch; start again to resume from the checkpoint")


def build(ws_state: gr.State):
    with gr.Tab("Train", id="train"):
        with gr.Row():
            prompt = gr.Radio(["textual", "visual"], value="textual", label="Prompt type (CoOp / VPT)",
                              elem_id="prompt-type")
            rule = gr.Dropdown(["topk", "fixed", "grip", "all"], value="topk", label="Pseudo-label schedule",
                               elem_id="schedule")
            rounds = gr.Number(value=10, precision=0, label="Rounds (grip / fixed)")
        with gr.Row():
            epochs = gr.Number(value=5, precision=0, label="Epochs", elem_id="epochs")
            lr = gr.Number(value=0.1, label="Learning rate", elem_id="lr")
            beta = gr.Number(value=1.0, label="β (synthetic loss weight)", elem_id="beta")
            fresh = gr.Checkbox(value=False, label="Start fresh (discard an unfinished run)")
        with gr.Row():
            start = gr.Button("Start training", variant="primary", elem_id="train-btn")
            cancel = gr.Button("Cancel", variant="stop", elem_id="cancel-train-btn")
        status = gr.Markdown(elem_id="train-status")
        plot = gr.LinePlot(history_frame([], 1), x="step", y="value", color="metric",
                           title="Loss and accuracy per epoch", elem_id="train-plot", height=300)
        final = gr.Markdown(elem_id="train-final")
    start.click(run_training, [ws_state, prompt, rule, epochs, lr, beta, rounds, fresh], [status, plot, final],
                concurrency_limit=4)
    cancel.click(cancel_training, ws_state, status, concurrency_limit=None)
    return {"final": final, "epochs": epochs, "prompt": prompt}
