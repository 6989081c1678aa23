"""Fixtures for every layer: the environment each test runs in, and the tiny models (built once a session)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.tiny_sd import save_tiny_sd

# As for the `diffier` subprocesses: the hub is never contacted (read before huggingface_hub is imported).
os.environ["HF_HUB_OFFLINE"] = "1"
# Caches diffier keeps (models.checkpoints.cached_sha256) go to a folder of the test session's, not the user's.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="diffier-test-cache-")


@pytest.fixture(autouse=True)
def _no_diffier_environment(monkeypatch):
    """The developer's own DIFFIER_* defaults must not reach the commands under test."""
    for name in [name for name in os.environ if name.startswith("DIFFIER_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> dict[str, Path]:
    """Folders of a tiny SD pipeline, ε- and v-prediction, saved with save_pretrained."""
    return save_tiny_sd(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    """A tiny SDXL pipeline folder, saved with save_pretrained (tests/tiny_sd.py)."""
    from tests.tiny_sd import save_tiny_sdxl

    return save_tiny_sdxl(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="session")
def tiny_sdxl_v(tiny_sdxl, tmp_path_factory) -> Path:
    """The tiny SDXL read as a v-prediction model (SDXL's 768-v fine-tunes): only the scheduler config differs."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("sdxl-v") / "tiny-sdxl-v"
    shutil.copytree(tiny_sdxl, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "prediction_type": "v_prediction"}))
    return folder


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny StableSR checkpoint and CFW VAE in the official formats (tests/tiny_stablesr.py)."""
    from tests.tiny_stablesr import save_tiny_stablesr

    return save_tiny_stablesr(tmp_path_factory.mktemp("stablesr"))
