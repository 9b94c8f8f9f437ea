"""Results tab: final metrics against zero-shot, runs compared, downloads (prompt, predictions.csv, the report)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..engine.studio import get_studio
from .common import pct
from .train_tab import final_markdown

RUN_HEADERS = ["time", "paradigm", "prompt", "rule", "epochs", "λ", "zero-shot", "pseudo-label (fused)", "final",
               "harmonic mean"]


def results(ws: str | None):
    """(summary markdown, runs table, download files, final confusion image)."""
    if not ws:
        return "No workspace open.", [], None, None
    studio = get_studio(ws)
    res = studio.results()
    m = res["metrics"]
    parts = []
    if m.get("pseudolabel_accuracy"):
        acc = m["pseudolabel_accuracy"]
        parts.append(f"Pseudo-label accuracy — text {pct(acc.get('text'))} · aux {pct(acc.get('aux'))} · fused "
                     f"{pct(acc.get('fused'))} (λ = {m.get('lam')})")
    if m.get("final"):
        parts.append(final_markdown(m["final"]))
    else:
        parts.append("No trained prompts yet: train them in the **Train** tab.")
    rows = []
    for r in reversed(res["runs"]):
        cfg = r.get("config", {})
        f = r.get("final", {})
        rows.append([r.get("time", ""), (r.get("paradigm") or "").upper(), cfg.get("train", {}).get("prompt"),
                     cfg.get("pseudolabel", {}).get("rule"), cfg.get("train", {}).get("epochs"),
                     cfg.get("pseudolabel", {}).get("lam"), pct(f.get("zero_shot_accuracy")),
                     pct((r.get("pseudolabel_accuracy") or {}).get("fused")), pct(f.get("accuracy")),
                     pct(f.get("harmonic_mean"))])
    files = list(res["files"])
    if Path(ws, "report").is_dir():
        files.append(studio.report_zip())
    cm = Path(ws, "report", "confusion_final.png")
    return "\n\n".join(parts), rows, files or None, str(cm) if cm.is_file() else None


def build(ws_state: gr.State):
    with gr.Tab("Results", id="results") as tab:
        refresh = gr.Button("Refresh", elem_id="results-refresh")
        summary = gr.Markdown(elem_id="results-summary")
        runs = gr.Dataframe(headers=RUN_HEADERS, label="Runs (newest first)", interactive=False,
                            elem_id="runs-table", wrap=True)
        with gr.Row():
            downloads = gr.File(label="Downloads: learned prompt + manifest, predictions.csv, full report (zip)",
                                file_count="multiple", interactive=False, elem_id="downloads")
            cm = gr.Image(label="Confusion matrix of the trained prompts (test)", type="filepath",
                          elem_id="cm-final")
    outputs = [summary, runs, downloads, cm]
    refresh.click(results, ws_state, outputs)
    tab.select(results, ws_state, outputs)
    return {"refresh": results, "outputs": outputs}
