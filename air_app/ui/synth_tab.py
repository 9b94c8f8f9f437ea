"""Synthesize tab: LoRA fine-tuning and generation (progress, cancel, resume), per-class galleries with the
representative score of each sample, click to prune or restore, keep-K, and regeneration with a custom prompt."""

from __future__ import annotations

import gradio as gr

from ..engine.studio import get_studio
from ..errors import UserError
from .common import require_workspace, user_errors
from .jobs import SLOT, Job


def follow(job: Job, progress: gr.Progress | None):
    """Yield the job's status until it ends; a failure becomes a visible error."""
    while not job.done.wait(0.3):
        if progress is not None and job.progress:
            what, done, total = job.progress
            progress((done, total), desc=what)
        yield job.status()
    yield job.status()
    if job.state == "failed":
        raise UserError(job.error or f"{job.name} failed")


def _class_index(studio, class_name: str | None) -> int | None:
    classes = studio.status()["classes"]
    if class_name in classes:
        return classes.index(class_name)
    return None


def gallery_for(ws: str | None, class_name: str | None):
    """(gallery items, sample ids, counts markdown, class choices) for one class."""
    if not ws:
        return [], [], "No workspace open.", gr.update(choices=[], value=None)
    studio = get_studio(ws)
    status = studio.status()
    classes = status["classes"]
    if class_name not in classes:
        class_name = classes[0] if classes else None
    c = classes.index(class_name) if class_name else None
    samples = studio.samples(c) if c is not None else []
    items = [(s.path, f"{'✓ kept' if s.kept else '✗ pruned'}{' (manual)' if s.manual is not None else ''} · "
                      f"r={'–' if s.score is None else f'{s.score:.3f}'}") for s in samples]
    pc = status["per_class"]
    counts = (f"**{class_name}**: {sum(s.kept for s in samples)} kept / {sum(not s.kept for s in samples)} pruned of "
              f"{len(samples)} · all classes: {status['kept']} kept of {status['synthetic']}"
              if class_name else "No classes.")
    empty = [classes[i] for i, row in pc.items() if row["kept"] == 0]
    if empty and status["synthetic"]:
        counts += f"\n\n⚠ no kept samples for: {', '.join(empty[:6])} — the auxiliary classifier ignores them"
    return items, [s.id for s in samples], counts, gr.update(choices=classes, value=class_name)


@user_errors
def toggle_sample(ws: str | None, class_name: str, ids: list[int], evt: gr.SelectData):
    """Click on a sample: prune it if kept, restore it if pruned (persisted in the workspace)."""
    ws = require_workspace(ws)
    if evt is None or evt.index is None or not 0 <= int(evt.index) < len(ids):
        raise UserError("that sample is no longer in the gallery; refresh it")
    get_studio(ws).toggle(ids[int(evt.index)])
    return gallery_for(ws, class_name)


def _settings(lora_steps, per_class, keep, gen_steps) -> dict:
    out = {}
    for key, value in (("finetune.steps", lora_steps), ("synthesis.per_class", per_class), ("synthesis.keep", keep),
                       ("synthesis.steps", gen_steps)):
        if value is not None and value != "":
            out[key] = int(value)
    return out


def _start(ws: str, name: str, fn, overrides: dict) -> Job:
    studio = get_studio(ws)
    studio.context(overrides=overrides)  # validate the settings before anything starts
    return SLOT.start(name, studio.root, fn)


def _run_stage(ws, stage: str, settings: tuple, progress):
    ws = require_workspace(ws)
    overrides = _settings(*settings)
    studio = get_studio(ws)
    method = studio.finetune if stage == "LoRA fine-tuning" else studio.synthesize
    job = _start(ws, stage, lambda hooks: method(hooks, overrides), overrides)
    yield from follow(job, progress)


@user_errors
def run_finetune(ws, lora_steps, per_class, keep, gen_steps, progress=gr.Progress()):
    yield from _run_stage(ws, "LoRA fine-tuning", (lora_steps, per_class, keep, gen_steps), progress)


@user_errors
def run_generate(ws, lora_steps, per_class, keep, gen_steps, progress=gr.Progress()):
    yield from _run_stage(ws, "generation", (lora_steps, per_class, keep, gen_steps), progress)


@user_errors
def run_regenerate(ws, class_name, prompt, lora_steps, per_class, keep, gen_steps, progress=gr.Progress()):
    ws = require_workspace(ws)
    studio = get_studio(ws)
    c = _class_index(studio, class_name)
    if c is None:
        raise UserError("choose a class to regenerate")
    overrides = _settings(lora_steps, per_class, keep, gen_steps)
    job = _start(ws, f"regenerating '{class_name}'",
                 lambda hooks: studio.synthesize(hooks, overrides, class_idx=c, prompt=prompt or ""), overrides)
    yield from follow(job, progress)


@user_errors
def cancel_job(ws, when: str = "the job stops at the next step; start it again to resume"):
    """Ask the workspace's running job to stop (it checks between steps); says what happens next."""
    ws = require_workspace(ws)
    if SLOT.cancel(get_studio(ws).root):
        return f"Cancelling… {when}."
    return "Nothing is running for this workspace."


@user_errors
def keep_k(ws, class_name, k, everywhere: bool):
    ws = require_workspace(ws)
    studio = get_studio(ws)
    if k is None or int(k) <= 0:
        raise UserError("K must be a positive integer")
    c = None if everywhere else _class_index(studio, class_name)
    if c is None and not everywhere:
        raise UserError("choose a class first")
    studio.keep_most_representative(int(k), c)
    return gallery_for(ws, class_name)


def build(ws_state: gr.State):
    with gr.Tab("Synthesize", id="synthesize") as tab:
        with gr.Row():
            lora_steps = gr.Number(label="LoRA steps", precision=0, value=None, elem_id="lora-steps")
            per_class = gr.Number(label="Images per class (M)", precision=0, value=None, elem_id="per-class")
            keep = gr.Number(label="Keep per class (K)", precision=0, value=None, elem_id="keep")
            gen_steps = gr.Number(label="Denoising steps", precision=0, value=None, elem_id="gen-steps")
        with gr.Row():
            ft_btn = gr.Button("Fine-tune LoRA", elem_id="finetune-btn")
            gen_btn = gr.Button("Generate samples", variant="primary", elem_id="generate-btn")
            cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-synth-btn")
        job_status = gr.Markdown(elem_id="synth-status")
        with gr.Row():
            class_pick = gr.Dropdown(label="Class", choices=[], elem_id="synth-class", scale=2)
            counts = gr.Markdown(elem_id="synth-counts")
        gr.Markdown("Click a sample to prune it (or restore a pruned one). Captions show r = cos(g, μ_c).")
        gallery = gr.Gallery(label="Synthetic samples", columns=8, height=420, allow_preview=False,
                             elem_id="synth-gallery", format="png", interactive=False)
        ids = gr.State([])
        with gr.Row():
            k_value = gr.Number(label="K", value=4, precision=0, elem_id="keep-k")
            keep_class_btn = gr.Button("Keep the K most representative (this class)", elem_id="keep-class-btn")
            keep_all_btn = gr.Button("… in every class", elem_id="keep-all-btn")
        with gr.Row():
            custom_prompt = gr.Textbox(label="Custom prompt for this class (empty = template)", scale=3,
                                       elem_id="custom-prompt")
            regen_btn = gr.Button("Regenerate this class", elem_id="regen-btn")

    settings = [lora_steps, per_class, keep, gen_steps]
    gallery_outputs = [gallery, ids, counts, class_pick]
    refresh = (lambda ws, c: gallery_for(ws, c))
    ft_btn.click(run_finetune, [ws_state, *settings], job_status, concurrency_limit=4)
    gen_btn.click(run_generate, [ws_state, *settings], job_status, concurrency_limit=4) \
        .then(refresh, [ws_state, class_pick], gallery_outputs)
    regen_btn.click(run_regenerate, [ws_state, class_pick, custom_prompt, *settings], job_status,
                    concurrency_limit=4).then(refresh, [ws_state, class_pick], gallery_outputs)
    cancel_btn.click(cancel_job, ws_state, job_status, concurrency_limit=None)
    tab.select(refresh, [ws_state, class_pick], gallery_outputs)
    class_pick.input(refresh, [ws_state, class_pick], gallery_outputs)
    gallery.select(toggle_sample, [ws_state, class_pick, ids], gallery_outputs)
    keep_class_btn.click(lambda ws, c, k: keep_k(ws, c, k, False), [ws_state, class_pick, k_value], gallery_outputs)
    keep_all_btn.click(lambda ws, c, k: keep_k(ws, c, k, True), [ws_state, class_pick, k_value], gallery_outputs)
    return {"refresh": refresh, "inputs": [ws_state, class_pick], "outputs": gallery_outputs,
            "settings": settings, "job_status": job_status}
