"""The learning-free generator's fills (rt_portrait.generator), on synthetic fields."""

from __future__ import annotations

import torch

from rt_portrait.flow.types import FlowFields, Region
from rt_portrait.generator import GeneratorInput, WarpFillGenerator, iris_discs, label_irises
from rt_portrait.head import load_template

R = 128


def _landmarks(shift: float = 0.0) -> torch.Tensor:
    """Template vertices placed on a 128 px grid (face ~80 px wide); irises moved by ``shift`` px."""
    tpl = load_template()
    v = torch.tensor(tpl.vertices, dtype=torch.float32) * 40.0 + torch.tensor([R / 2, R / 2, 0.0])
    for side in ("left_iris", "right_iris"):
        v[torch.tensor(tpl.group(side).astype("int64")), 0] += shift
    return v


def _fields(labels: torch.Tensor, flow: torch.Tensor) -> FlowFields:
    return FlowFields(
        flow=flow,
        visibility=torch.ones(1, R, R),
        depth=torch.zeros(1, R, R),
        normal=torch.zeros(3, R, R),
        labels=labels,
        encoding=torch.zeros(16, R, R),
    )


def test_label_irises_marks_the_discs_inside_the_openings() -> None:
    tpl = load_template()
    lm = _landmarks()
    labels = torch.full((R, R), int(Region.EYES), dtype=torch.int64)
    out = label_irises(labels, lm, tpl)
    iris = out == int(Region.IRIS)
    assert int(iris.sum()) > 10
    assert bool((iris <= iris_discs(lm, tpl, R)).all())  # only inside the discs
    assert bool((out[~iris] == int(Region.EYES)).all())  # nothing else changed


def test_a_moved_gaze_does_not_show_the_source_iris_twice() -> None:
    """Eye pixels that still sample the source iris after the iris moved get the eye's colours;
    the moved iris itself keeps the warp."""
    tpl = load_template()
    source_lm, target_lm = _landmarks(), _landmarks(shift=3.0)
    eye = torch.full((R, R), int(Region.EYES), dtype=torch.int64)
    source_labels = label_irises(eye, source_lm, tpl)
    source_iris = source_labels == int(Region.IRIS)
    warped = torch.full((3, R, R), 0.9)  # sclera
    warped[:, source_iris] = 0.2  # the identity flow shows the old iris where it was
    inputs = GeneratorInput(
        warped=warped,
        source=warped,
        fields=_fields(eye, torch.zeros(2, R, R)),
        history=None,
        source_labels=source_labels,
        landmarks=target_lm,
    )
    out = WarpFillGenerator()(inputs)
    target_iris = iris_discs(target_lm, tpl, R)
    stale = source_iris & ~target_iris
    assert int(stale.sum()) > 3
    assert float(out.alpha[0][stale].min()) == 1.0
    assert float(out.face[:, stale].mean()) > 0.6  # sclera-coloured now, not the old iris (0.2)
    assert float(out.alpha[0][target_iris].max()) == 0.0  # the moved iris keeps the warp
