"""AiR Studio: labeling-free adaptation of CLIP with diffusion-generated images (AiR, CVPR 2025)."""

__version__ = "0.1.0"
