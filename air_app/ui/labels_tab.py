"""Pseudo-labels tab: λ and K re-fuse instantly from cached features; accuracies (or agreement rates), the three
confusion matrices, a per-class table, a gallery of text/aux disagreements, and an inspector with Grad-CAM."""

from __future__ import annotations

import io

import gradio as gr
from PIL import Image

from ..engine.studio import get_studio
from ..errors import UserError
from .common import pct, require_workspace, user_errors

DISPLAY_SIZE = 224
TABLE_HEADERS = ["class", "selected", "text votes", "aux votes", "text≠aux", "text acc", "aux acc", "fused acc"]


def _rule(rule: str | None) -> str:
    return rule if rule in ("topk", "all") else "topk"


def metrics_markdown(summary: dict) -> str:
    if summary["has_ground_truth"]:
        acc = summary["pseudolabel_accuracy"]
        head = (f"**Pseudo-label accuracy** — text {pct(acc['text'])} · aux {pct(acc['aux'])} · "
                f"**fused {pct(acc['fused'])}** · selected {pct(summary['selected_accuracy'])}")
    else:
        head = "**No ground truth** (unlabeled folder): agreement rates instead of accuracies"
    agree = summary["agreement"]
    return (f"{head}\n\nAgreement — text/aux {pct(agree['text_aux'])} · text/fused {pct(agree['text_fused'])} · "
            f"aux/fused {pct(agree['aux_fused'])}\n\nλ = {summary['lam']:g}, K = {summary['k']}: "
            f"**{summary['selected']}** of {summary['candidates']} candidate images selected")


@user_errors
def refuse(ws: str | None, lam: float, k: float, rule: str):
    """Re-fuse from cached features: (metrics, per-class table, disagreement gallery, disagreement rows)."""
    ws = require_workspace(ws)
    studio = get_studio(ws)
    if k is None or int(k) <= 0:
        raise UserError("K must be a positive integer")
    result = studio.fuse(float(lam), int(k), _rule(rule))
    studio.save_pseudolabel_settings(float(lam), int(k), _rule(rule))
    per_class = sorted(result.per_class(), key=lambda r: -r["disagreement"])
    table = [[r["class"], r["selected"], r["text_votes"], r["aux_votes"], f"{100 * r['disagreement']:.0f}%",
              pct(r["text_acc"]), pct(r["aux_acc"]), pct(r["fused_acc"])] for r in per_class]
    dis = studio.disagreements(result)
    items = [(d["path"], f"text: {d['text']} · aux: {d['aux']}" + (f" · true: {d['gt']}" if d["gt"] else ""))
             for d in dis]
    return metrics_markdown(studio.summary(result)), table, items, [d["row"] for d in dis]


@user_errors
def charts(ws: str | None, lam: float, k: float, rule: str):
    """The three confusion matrices (text, aux, fused) as images, or nothing without ground truth."""
    ws = require_workspace(ws)
    studio = get_studio(ws)
    result = studio.fuse(float(lam), int(k or 16), _rule(rule))
    pngs = studio.confusion_images(result)
    return tuple(Image.open(io.BytesIO(pngs[n])) if pngs[n] else None for n in ("text", "aux", "fused"))


def _top5(title: str, pairs: list[tuple[str, float]], chosen: str) -> str:
    rows = "\n".join(f"| {name} | {100 * p:.1f}% |" for name, p in pairs)
    return f"**{title}** (CAM for *{chosen}*)\n\n| class | p |\n|---|---|\n{rows}"


@user_errors
def inspect(ws: str | None, row: float | None, lam: float, k: float, target: str | None):
    """(input image, CAM text, CAM aux, CAM fused, top-5 markdown) for one real image."""
    ws = require_workspace(ws)
    if row is None:
        raise UserError("choose an image: click a disagreement or enter its row number")
    studio = get_studio(ws)
    exp = studio.inspect(int(row), float(lam), int(k or 16), target or None)
    classes = studio.labeling_data().classes
    rec = studio.image_rows()[int(row)]
    md = (f"Image row {int(row)}: `{rec['path']}`" + (f" · true class **{rec['gt']}**" if rec["gt"] else "") + "\n\n"
          + "\n\n".join(_top5(t, exp.top5[n], classes[exp.classes[n]])
                        for t, n in (("Text classifier", "text"), ("Auxiliary classifier", "aux"),
                                     ("Fused", "fused"))))
    def to_img(arr) -> Image.Image:  # small model inputs (64 px) are enlarged for display only
        img = Image.fromarray(arr)
        return img if img.width >= DISPLAY_SIZE else img.resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.NEAREST)

    return (to_img((exp.image * 255).astype("uint8")), to_img(exp.overlays["text"]),
            to_img(exp.overlays["aux"]), to_img(exp.overlays["fused"]), md)


def pick_disagreement(rows: list[int], evt: gr.SelectData):
    if evt is None or evt.index is None or not 0 <= int(evt.index) < len(rows):
        return gr.update()
    return rows[int(evt.index)]


def build(ws_state: gr.State):
    with gr.Tab("Pseudo-labels", id="pseudolabels") as tab:
        with gr.Row():
            lam = gr.Slider(0, 5, value=1.0, step=0.05, label="λ (weight of the auxiliary classifier)",
                            elem_id="lam-slider")
            k = gr.Number(value=16, precision=0, label="K pseudo-labels per class", elem_id="k-per-class")
            rule = gr.Dropdown(["topk", "all"], value="topk", label="Selection", elem_id="rule")
        metrics = gr.Markdown(elem_id="pl-metrics")
        with gr.Row():
            cm_text = gr.Image(label="Text classifier", type="pil", format="png", elem_id="cm-text")
            cm_aux = gr.Image(label="Auxiliary classifier", type="pil", format="png", elem_id="cm-aux")
            cm_fused = gr.Image(label="Fused", type="pil", format="png", elem_id="cm-fused")
        table = gr.Dataframe(headers=TABLE_HEADERS, label="Per class (most text/aux disagreement first)",
                             interactive=False, elem_id="per-class-table", wrap=True)
        gr.Markdown("**Where text and auxiliary classifiers disagree** — click an image to inspect it.")
        dis_gallery = gr.Gallery(columns=8, height=260, allow_preview=False, elem_id="disagreements")
        dis_rows = gr.State([])
        with gr.Row():
            row = gr.Number(label="Image row (predictions.csv order)", precision=0, value=0, elem_id="inspect-row")
            target = gr.Dropdown(label="Explain class (empty = each classifier's prediction)", choices=[],
                                 elem_id="inspect-class", allow_custom_value=False)
            inspect_btn = gr.Button("Inspect", elem_id="inspect-btn")
        with gr.Row():
            original = gr.Image(label="Input", type="pil", elem_id="cam-input", height=240)
            cam_text = gr.Image(label="Grad-CAM: text", type="pil", elem_id="cam-text", height=240)
            cam_aux = gr.Image(label="Grad-CAM: auxiliary", type="pil", elem_id="cam-aux", height=240)
            cam_fused = gr.Image(label="Grad-CAM: fused", type="pil", elem_id="cam-fused", height=240)
        top5 = gr.Markdown(elem_id="inspect-top5")

    inputs = [ws_state, lam, k, rule]
    fast_outputs = [metrics, table, dis_gallery, dis_rows]
    chart_outputs = [cm_text, cm_aux, cm_fused]
    for comp in (lam, k, rule):
        comp.change(refuse, inputs, fast_outputs, trigger_mode="always_last", show_progress="hidden") \
            .then(charts, inputs, chart_outputs, trigger_mode="always_last", show_progress="hidden")
    tab.select(refuse, inputs, fast_outputs).then(charts, inputs, chart_outputs)
    cam_outputs = [original, cam_text, cam_aux, cam_fused, top5]
    dis_gallery.select(pick_disagreement, dis_rows, row).then(inspect, [ws_state, row, lam, k, target], cam_outputs)
    inspect_btn.click(inspect, [ws_state, row, lam, k, target], cam_outputs)
    return {"inputs": inputs, "fast_outputs": fast_outputs, "chart_outputs": chart_outputs, "lam": lam, "k": k,
            "rule": rule, "target": target}
