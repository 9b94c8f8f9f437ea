"""AiR Studio: labeling-free adaptation of CLIP with diffusion-generated images (AiR, CVPR 2025)."""

__version__ = "0.1.0"


def load_classifier(workspace, device=None):
    """Classify images with the prompts learned in `workspace` (see :mod:`air_app.classifier`)."""
    from .classifier import load_classifier as _load

    return _load(workspace, device)
