"""Packaged landmarks of the embedded portraits against the tracker itself."""

from __future__ import annotations

import numpy as np
import pytest

from rt_portrait.core.assets import default_portrait, default_portrait_landmarks
from rt_portrait.tracking import track_image


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_packaged_landmarks_are_the_trackers(name: str) -> None:
    live = track_image(default_portrait(name)).landmarks
    packaged = default_portrait_landmarks(name)
    assert packaged.shape == (478, 3) and packaged.dtype == np.float32
    # static-image tracking is deterministic here; a tracker update moves them by pixels
    assert np.abs(packaged - live).max() < 0.5


def test_unknown_portrait_names_the_choices() -> None:
    with pytest.raises(ValueError, match="astronaut"):
        default_portrait_landmarks("mona_lisa")
