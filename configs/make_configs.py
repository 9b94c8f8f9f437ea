"""Write the paper-scale protocol configs: one YAML per benchmark preset × paradigm × prompt type.

    python configs/make_configs.py     # (re)writes configs/<preset>_<paradigm>_<prompt>.yaml

Defaults follow DESIGN.md §3 and the base protocol (Menghini et al., GRIP): ViT-B/32 with OpenAI weights, SD 1.5,
M = 120 synthetic images per class, 10 GRIP rounds of 150 epochs, the base template "a photo of a {}".
"""

from pathlib import Path

PRESETS = ["flowers102", "resisc45", "dtd", "eurosat", "fgvcaircraft"]
PARADIGMS = ["ul", "ssl", "trzsl"]
PROMPTS = ["textual", "visual"]

TEMPLATE = """# {preset} / {paradigm_upper} / {prompt} prompts: the paper-scale protocol (written by configs/make_configs.py).
#   python -m air_app run --config configs/{name}.yaml --data-root DIR
# DIR holds {preset}/train/<class>/* and {preset}/test/<class>/* (`python -m air_app download {preset} --data-root DIR`).
seed: 1
workspace: workspaces/{name}
models:
  mode: real
  clip: ViT-B-32:openai
  diffusion: stable-diffusion-v1-5/stable-diffusion-v1-5
data:
  preset: {preset}
  template_style: base
  paradigm: {paradigm}
  labeled_per_class: 2
  seen_fraction: 0.62
finetune:
  rank: 8
  alpha: 8
  lr: 0.0001
  steps: 1000
  batch_size: 4
  captions: domain
synthesis:
  per_class: 120
  steps: 25
  guidance: 7.5
  batch_size: 16
pseudolabel:
  lam: 1.0
  rule: grip
  grip_rounds: 10
  grip_step: 0.1
train:
  prompt: {prompt}
  n_ctx: 16
  epochs: 150
  lr: 0.1
  momentum: 0.9
  weight_decay: 0.1
  batch_size: 16
  warmup_epochs: 5
  beta: 1.0
"""

if __name__ == "__main__":
    here = Path(__file__).parent
    for preset in PRESETS:
        for paradigm in PARADIGMS:
            for prompt in PROMPTS:
                name = f"{preset}_{paradigm}_{prompt}"
                (here / f"{name}.yaml").write_text(TEMPLATE.format(
                    preset=preset, paradigm=paradigm, paradigm_upper=paradigm.upper(), prompt=prompt, name=name))
    print(f"wrote {len(PRESETS) * len(PARADIGMS) * len(PROMPTS)} configs to {here}")
