"""The batched, device-resident batch builder against the per-sample CPU one it replaces.

Same parameters in, same crops out: exactly when nothing is zoomed (the region is the crop,
so no resize), closely when zoomed (bilinear here, antialiased bilinear there). Runs on the
CPU; the device path is plain torch, so CUDA runs the same code.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rt_portrait.flow.types import FlowFields
from rt_portrait.generator.conditioning import build_condition, build_condition_batch, build_condition_batched
from rt_portrait.generator.types import GeneratorInput
from rt_portrait.training.dataset import (
    AugmentConfig,
    BatchParams,
    DeviceCache,
    PairCache,
    _crop_box,
    _head_centre,
    apply_batch,
    apply_sample,
    crop_batch,
    crop_sample,
    draw_batch_params,
    draw_sample,
    make_batch_device,
    write_synthetic_cache,
)

WINDOW = 48


def _rich_clip(dest: Path, pairs: int, seed: int) -> None:
    """A clip whose fields all matter: random blobs of every region, random encoding, flow,
    normal and depth, two sources picked by ``source_index``, one pair with no labels."""
    rng = np.random.default_rng(seed)
    dest.mkdir(parents=True)
    r = WINDOW
    yy, xx = np.mgrid[0:r, 0:r]
    labels = np.zeros((pairs, r, r), np.uint8)
    for p in range(pairs - 1):  # the last pair stays unlabelled (head centre = window centre)
        for region in range(1, 9):
            cy, cx = rng.uniform(0.1, 0.9, 2) * r
            labels[p][((yy - cy) ** 2 + (xx - cx) ** 2) < rng.uniform(3, 10) ** 2] = region

    def u8(c: int) -> np.ndarray:
        return rng.integers(0, 256, (pairs, c, r, r), dtype=np.uint8)

    def f16(c: int, scale: float, offset: float = 0.0) -> np.ndarray:
        return (offset + scale * rng.standard_normal((pairs, c, r, r))).astype(np.float16)

    arrays = {
        "warped": u8(3),
        "target": u8(3),
        "history": u8(3),
        "visibility": u8(1),
        "labels": labels,
        "encoding": f16(16, 0.1),
        "depth": f16(1, 10.0, 30.0),
        "normal": f16(3, 0.6),
        "flow": f16(2, 3.0),
        "source": rng.integers(0, 256, (2, 3, r, r), dtype=np.uint8),
        "source_index": (np.arange(pairs) % 2).astype(np.int32),
    }
    for k, v in arrays.items():
        np.save(dest / f"{k}.npy", v)
    (dest / "done").write_text("{}")


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("device-batch")
    plain = write_synthetic_cache(root / "plain", pairs=4, size=WINDOW)
    rich = write_synthetic_cache(root / "rich", pairs=3, size=WINDOW, seed=1)
    _rich_clip(rich / "clip1", pairs=5, seed=2)
    # constant fields: a crop of them shows the zoom and flip scaling alone
    const = write_synthetic_cache(root / "const", pairs=3, size=WINDOW, seed=3)
    c = const / "clip0"
    for name, value in (("encoding", 0.05), ("depth", 6.0), ("normal", 0.25), ("flow", 1.5)):
        a = np.load(c / f"{name}.npy")
        np.save(c / f"{name}.npy", np.full_like(a, value))
    return {"plain": plain, "rich": rich, "const": const}


def _params(cache: PairCache, aug: AugmentConfig, n: int, seed: int) -> tuple[list[int], list]:
    rng = np.random.default_rng(seed)
    idx = [int(i) for i in rng.integers(0, len(cache), n)]
    return idx, [draw_sample(np.asarray(cache.pair(i)["labels"]), aug, rng) for i in idx]


def _both(cache: PairCache, dc: DeviceCache, aug: AugmentConfig, idx: list[int], ps: list):
    cpu = [apply_sample(cache.pair(i), p, aug) for i, p in zip(idx, ps, strict=True)]
    dev = apply_batch(dc, BatchParams.stack(idx, ps), aug)
    stacked = [torch.stack([s[k] for s in cpu]) for k in range(4)]
    return stacked, [dev.cond, dev.warped, dev.target, dev.face]


def test_device_cache_holds_every_pair_in_the_cache_order(caches: dict[str, Path]) -> None:
    cache = PairCache(caches["rich"])
    dc = DeviceCache(cache)
    assert len(dc) == len(cache) == 8 and dc.window == WINDOW
    for i in range(len(cache)):
        pair = cache.pair(i)
        images = dc.images[i].permute(2, 0, 1).numpy()
        fields = dc.fields[i].permute(2, 0, 1).numpy()
        np.testing.assert_array_equal(images[0:3], pair["warped"])
        np.testing.assert_array_equal(images[3:6], pair["target"])
        np.testing.assert_array_equal(images[6:9], pair["history"])
        np.testing.assert_array_equal(images[9:12], pair["source"])  # by source_index
        np.testing.assert_array_equal(images[12:13], pair["visibility"])
        np.testing.assert_array_equal(fields[0:16], pair["encoding"])
        np.testing.assert_array_equal(fields[16:17], pair["depth"])
        np.testing.assert_array_equal(fields[17:20], pair["normal"])
        np.testing.assert_array_equal(fields[20:22], pair["flow"])
        np.testing.assert_array_equal(dc.labels[i].numpy(), pair["labels"])
        assert tuple(dc.centre[i].tolist()) == _head_centre(np.asarray(pair["labels"]))
    assert tuple(dc.centre[-1].tolist()) == (WINDOW / 2, WINDOW / 2)  # the unlabelled pair
    assert not torch.equal(dc.images[3, ..., 9:12], dc.images[4, ..., 9:12])  # two sources


@pytest.mark.parametrize("name", ["plain", "rich"])
@pytest.mark.parametrize("crop", [32, WINDOW])
def test_unzoomed_batch_equals_the_cpu_path(caches: dict[str, Path], name: str, crop: int) -> None:
    cache = PairCache(caches[name])
    dc = DeviceCache(cache)
    aug = AugmentConfig(crop=crop, scale=0.0)
    idx, ps = _params(cache, aug, 24, seed=4)
    # the draws cover both flips and both history cases, and boxes off the corner
    assert {p.flip for p in ps} == {True, False} and {p.history for p in ps} == {True, False}
    assert crop == WINDOW or len({(p.y0, p.x0) for p in ps}) > 3
    cpu, dev = _both(cache, dc, aug, idx, ps)
    for a, b, what in zip(cpu, dev, ("cond", "warped", "target", "face"), strict=True):
        assert a.shape == b.shape, what
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=what)
    cond = dev[0]
    assert float(cond[:, 39].mean()) not in (0.0, 1.0)  # some kept, some dropped histories
    if name == "rich":
        assert float(cond[:, 7:23].abs().mean()) > 0.05 and float(cond[:, 24:27].abs().mean()) > 0.1
        assert int((cond[:, 27:36].amax((0, 2, 3)) > 0).sum()) == 9  # every region mask used


def test_zoomed_batch_is_close_to_the_cpu_path(caches: dict[str, Path]) -> None:
    cache = PairCache(caches["rich"])
    dc = DeviceCache(cache)
    aug = AugmentConfig(crop=32, scale=0.3)
    idx, ps = _params(cache, aug, 24, seed=5)
    assert min(p.side for p in ps) < 30 and max(p.side for p in ps) > 34
    cpu, dev = _both(cache, dc, aug, idx, ps)
    torch.testing.assert_close(dev[3], cpu[3], rtol=0, atol=0)  # labels: the same nearest pixels
    torch.testing.assert_close(dev[0][:, 27:36], cpu[0][:, 27:36], rtol=0, atol=0)
    for a, b, what in zip(cpu[:3], dev[:3], ("cond", "warped", "target"), strict=True):
        diff = (a - b).abs()
        # random pixels are the worst case for antialiasing vs. none; real images differ ~5e-4
        assert float(diff.mean()) < 0.06, (what, float(diff.mean()))
        assert float(diff.mean()) < 0.5 * float((a - a.flip(0)).abs().mean()), what  # far closer than chance
    # the unzoomed samples of the batch are exact up to the interpolation grid's rounding
    same = [k for k, p in enumerate(ps) if p.side == 32]
    assert same
    torch.testing.assert_close(dev[1][same], cpu[1][same], rtol=0, atol=1e-5)


def test_zoom_and_flip_rescale_flow_depth_and_encoding(caches: dict[str, Path]) -> None:
    cache = PairCache(caches["const"])
    dc = DeviceCache(cache)
    aug = AugmentConfig(crop=32, scale=0.3, flip=0.5)
    p = draw_batch_params(dc, 64, aug, torch.Generator().manual_seed(0))
    zoom = 32 / p.side.double()
    assert float(zoom.min()) < 0.85 and float(zoom.max()) > 1.15 and 0 < int(p.flip.sum()) < 64
    k = crop_batch(dc, p, aug)
    sign = (1 - 2 * p.flip.double())[:, None, None]

    def const(t: torch.Tensor) -> torch.Tensor:  # (B,) the value of a constant field
        assert float((t - t[:, :1, :1]).abs().max()) < 1e-5
        return t[:, 0, 0].double()

    ok = dict(rtol=1e-5, atol=1e-6)
    e = float(np.float16(0.05))  # the cache's float16 value
    torch.testing.assert_close(const(k.flow[:, 0]), 1.5 * zoom * sign[:, 0, 0], **ok)
    torch.testing.assert_close(const(k.flow[:, 1]), 1.5 * zoom, **ok)
    torch.testing.assert_close(const(k.depth[:, 0]), 6.0 * zoom * 32 / WINDOW, **ok)
    torch.testing.assert_close(const(k.encoding[:, 0]), e * zoom * sign[:, 0, 0], **ok)  # u
    torch.testing.assert_close(const(k.encoding[:, 1]), e * zoom, **ok)  # v
    torch.testing.assert_close(const(k.encoding[:, 2]), e * zoom, **ok)  # depth offset
    torch.testing.assert_close(const(k.encoding[:, 3]), torch.full_like(zoom, e), **ok)  # weight
    torch.testing.assert_close(const(k.normal[:, 0]), 0.25 * sign[:, 0, 0], **ok)
    # the same scaling as the CPU path, sample by sample
    for i in range(8):
        sp = replace(
            draw_sample(np.asarray(cache.pair(0)["labels"]), aug, np.random.default_rng(i)),
            side=int(p.side[i]),
            y0=int(p.y0[i]),
            x0=int(p.x0[i]),
            flip=bool(p.flip[i]),
        )
        c = crop_sample(cache.pair(int(p.index[i])), sp, aug)
        for name in ("flow", "depth", "encoding", "normal"):
            torch.testing.assert_close(getattr(k, name)[i], getattr(c, name), **ok)


def test_batched_conditioning_equals_the_per_sample_one() -> None:
    g = torch.Generator().manual_seed(0)
    r, b = 20, 6

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return scale * torch.randn((b, *shape), generator=g)

    t = {
        "warped": torch.rand(b, 3, r, r, generator=g),
        "source": torch.rand(b, 3, r, r, generator=g),
        "visibility": rand(1, r, r),
        "encoding": rand(16, r, r, scale=0.2),
        "depth": rand(1, r, r, scale=r),
        "normal": rand(3, r, r),
        "labels": torch.randint(0, 9, (b, r, r), generator=g),
    }
    history = torch.rand(b, 3, r, r, generator=g)
    valid = torch.tensor([True, False, True, True, False, False])
    got = build_condition_batched(**t, history=history, history_valid=valid)

    def one(i: int, with_history: bool) -> GeneratorInput:
        fields = FlowFields(
            flow=torch.zeros(2, r, r),
            visibility=t["visibility"][i],
            depth=t["depth"][i],
            normal=t["normal"][i],
            labels=t["labels"][i],
            encoding=t["encoding"][i],
        )
        h = history[i] if with_history else None
        return GeneratorInput(warped=t["warped"][i], source=t["source"][i], fields=fields, history=h)

    want = torch.stack([build_condition(one(i, bool(valid[i]))) for i in range(b)])
    assert torch.equal(got, want)
    assert torch.equal(want, build_condition_batch([one(i, True) for i in range(b)], valid.tolist()))
    assert float(got[:, 39].sum()) == 3 * r * r and float(got[~valid, 36:40].abs().sum()) == 0
    none = build_condition_batched(**t, history=None, history_valid=torch.ones(b, dtype=torch.bool))
    assert torch.equal(none, torch.stack([build_condition(one(i, False)) for i in range(b)]))
    with pytest.raises(ValueError, match="history_valid"):
        build_condition_batched(**t, history=history, history_valid=valid[:3])


def test_batch_parameters_follow_the_cpu_distributions(caches: dict[str, Path]) -> None:
    cache = PairCache(caches["rich"])
    dc = DeviceCache(cache)
    # no jitter, no zoom: the box is the CPU path's box around the head centre
    aug = AugmentConfig(crop=32, scale=0.0, jitter=0.0)
    p = draw_batch_params(dc, 64, aug, torch.Generator().manual_seed(1))
    assert set(p.index.tolist()) == set(range(len(cache)))
    for i, y0, x0 in zip(p.index.tolist(), p.y0.tolist(), p.x0.tolist(), strict=True):
        labels = np.asarray(cache.pair(i)["labels"])
        assert (y0, x0) == _crop_box(labels, 32, np.random.default_rng(0), 0.0), i
    aug = AugmentConfig(crop=32, scale=0.3, history_dropout=0.25, flip=0.5)
    p = draw_batch_params(dc, 4000, aug, torch.Generator().manual_seed(2))
    assert int(p.side.min()) == round(32 / 1.3) and int(p.side.max()) == round(32 / 0.7)
    assert bool((p.y0 >= 0).all() and (p.y0 + p.side <= WINDOW).all())
    assert bool((p.x0 >= 0).all() and (p.x0 + p.side <= WINDOW).all())
    assert float(p.flip.float().mean()) == pytest.approx(0.5, abs=0.03)
    assert float(p.history.float().mean()) == pytest.approx(0.75, abs=0.03)
    assert float(p.gain.min()) >= 0.85 and float(p.gain.max()) <= 1.15 and float(p.gain.std()) > 0.05
    assert float(p.bias.abs().max()) <= 0.05
    again = draw_batch_params(dc, 4000, aug, torch.Generator().manual_seed(2))
    assert torch.equal(again.y0, p.y0) and torch.equal(again.gain, p.gain)
    b = make_batch_device(dc, 5, aug, torch.Generator().manual_seed(3))
    assert b.cond.shape == (5, 40, 32, 32) and b.warped.shape == b.target.shape == (5, 3, 32, 32)
    assert b.face.shape == (5, 1, 32, 32)


def _cfg(cache: Path, out: Path, steps: int, resume: bool = False):
    from rt_portrait.training.train import TrainConfig

    return TrainConfig(
        mode="teacher",
        cache=cache,
        out=out,
        steps=steps,
        batch=4,
        lr=2e-3,
        warmup=1,
        channels=8,
        ckpt_minutes=100.0,
        resume=resume,
        log_every=1,
        batches="device",
        aug=AugmentConfig(crop=32),
    )


def test_training_on_device_batches_checkpoints_and_resumes(caches: dict[str, Path], tmp_path: Path) -> None:
    from rt_portrait.training.train import run

    cache = caches["rich"]
    full = run(_cfg(cache, tmp_path / "a", 6))
    assert full.step == 6 and all(np.isfinite(h["loss"]) for h in full.history)
    run(_cfg(cache, tmp_path / "b", 3))
    state = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    assert "batch_gen" in state and (tmp_path / "b" / "weights.safetensors").is_file()
    resumed = run(_cfg(cache, tmp_path / "b", 6, resume=True))
    assert resumed.step == 6
    for (name, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    # device batches are not the CPU ones: the same seed on the CPU path trains differently
    cpu = run(replace(_cfg(cache, tmp_path / "c", 6), batches="cpu"))
    assert any(
        not torch.equal(a, b) for a, b in zip(full.model.parameters(), cpu.model.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="batches"):
        run(replace(_cfg(cache, tmp_path / "d", 1), batches="gpu"))


def test_cli_passes_batches(caches: dict[str, Path], tmp_path: Path) -> None:
    from rt_portrait.training.__main__ import main

    out = tmp_path / "run"
    shutil.rmtree(out, ignore_errors=True)
    main(
        ["train", "--cache", str(caches["plain"]), "--out", str(out), "--crop", "32", "--channels", "8"]
        + ["--batch", "2", "--amp", "none", "--steps", "1", "--batches", "device"]
    )
    assert '"batches": "device"' in (out / "config.json").read_text()
    with pytest.raises(SystemExit):
        main(["train", "--cache", str(caches["plain"]), "--out", str(out), "--batches", "gpu"])
