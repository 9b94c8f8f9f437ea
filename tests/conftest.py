"""Test-wide settings: offline hubs, a shared tiny-model cache, no analytics, headless matplotlib."""

import os
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["MPLBACKEND"] = "Agg"
os.environ.setdefault("AIR_APP_CACHE", str(Path(tempfile.gettempdir()) / f"air_app_test_cache_{os.getuid()}"))

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_clip():
    from air_app.models.registry import REGISTRY

    return REGISTRY.clip("tiny", "cpu")


@pytest.fixture(scope="session")
def tiny_pipe():
    from air_app.models.registry import REGISTRY

    return REGISTRY.diffusion("tiny", "cpu")


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory) -> Path:
    """An ImageFolder of 100 procedural images (4 classes x 25)."""
    from air_app.data.demo import make_demo_images

    return make_demo_images(tmp_path_factory.mktemp("demo100"), per_class=25, seed=1)


@pytest.fixture(scope="session")
def classes_file(demo_images) -> Path:
    return demo_images.parent / "classes.txt"
