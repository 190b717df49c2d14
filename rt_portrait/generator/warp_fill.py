"""The learning-free generator: the warp itself, with its holes filled.

Kept as the fallback of the learned generator and as its baseline. Everything is on the
working grid (R x R) of the window; ``landmarks`` are the target head's 478 vertices in
working pixels (x, y, z), the geometry behind the region masks.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from rt_portrait.core.fill import (
    dilate,
    erode,
    gaussian_blur,
    mirror_fill,
    nonzero_box,
    push_pull_fill,
    sampled_at,
    source_area_ratio,
    warp_working,
)
from rt_portrait.core.types import Region
from rt_portrait.generator.mouth import (
    MOUTH_STYLES,
    MouthPaint,
    MouthPrior,
    box_centres,
    fit_opening,
    load_mouth_prior,
    mouth_frame,
    opening_coverage,
    visible_opening,
)
from rt_portrait.generator.types import GeneratorInput, GeneratorOutput
from rt_portrait.head.template import Template, load_template


def iris_discs(
    landmarks: torch.Tensor, template: Template, size: int, box: tuple[int, int, int, int] | None = None
) -> torch.Tensor:
    """(R, R) bool: working pixels inside either iris circle (centre and ring landmarks); only
    the working-grid ``box`` (v0, v1, u0, u1) when given, as a (v1 - v0, u1 - u0) mask."""
    v0, v1, u0, u1 = box if box is not None else (0, size, 0, size)
    dev = landmarks.device
    ys = torch.arange(v0, v1, device=dev, dtype=torch.float32) + 0.5
    xs = torch.arange(u0, u1, device=dev, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    inside = torch.zeros(v1 - v0, u1 - u0, dtype=torch.bool, device=dev)
    for side in ("left_iris", "right_iris"):
        idx = torch.tensor(np.asarray(template.group(side), dtype=np.int64), device=landmarks.device)
        pts = landmarks.index_select(0, idx)[:, :2]
        centre, ring = pts[0], pts[1:]
        radius = (ring - centre).norm(dim=1).mean()
        inside |= (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius * radius
    return inside


def label_irises(labels: torch.Tensor, landmarks: torch.Tensor, template: Template) -> torch.Tensor:
    """``labels`` with IRIS wherever an iris disc shows through its eye opening.

    The splatted labels of an image give an eye's lids a radius of extra reach, so a narrow
    opening reads as lid almost everywhere; this is the geometric answer, for the source
    image's label map (where the generator looks up what a pixel samples)."""
    from skimage.draw import polygon

    size = labels.shape[-1]
    opening = np.zeros((size, size), dtype=bool)
    xy = landmarks[:, :2].detach().cpu().numpy()
    for side in ("left_eye_loop", "right_eye_loop"):
        loop = xy[np.asarray(template.group(side))] - 0.5  # pixel centres at +0.5
        rr, cc = polygon(loop[:, 1], loop[:, 0], shape=(size, size))
        opening[rr, cc] = True
    iris = iris_discs(landmarks, template, size) & torch.from_numpy(opening).to(labels.device)
    return torch.where(iris, torch.full_like(labels, int(Region.IRIS)), labels)


_Ref = weakref.ref  # weak reference to a tensor (an entry must not keep its source alive)


# face labels whose texture may come from the mirror side (not the mouth interior: the mouth
# prior paints that; not hair and background: the shell has no mirror partner)
MIRROR_REGIONS = (Region.SKIN, Region.EYES, Region.BROWS, Region.NOSE, Region.LIPS, Region.IRIS)
# the source area per target pixel under which a visible face pixel is a stretched sliver
# (weight 0 at the first, 1 at the second), and under which skin is seen obliquely enough to
# sample past the silhouette
MIRROR_RATIO = (0.25, 0.5)
MIRROR_OBLIQUE = 0.7
# the share of the face that must be shown badly before the mirror side is consulted, and
# the size (working px) a badly shown region must span across to count
MIRROR_MIN_AREA = 0.06
MIRROR_OPENING = 5


def _area_ratio(flow: torch.Tensor) -> torch.Tensor:
    """:func:`source_area_ratio` of a (2, H, W) flow smoothed by a pixel (the splatted flow's
    point-to-point noise makes its per-pixel Jacobian speckled), 0 where undefined."""
    return source_area_ratio(gaussian_blur(flow[None], 1.0)[0]).nan_to_num(0.0)


def _shown_well(visibility: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """(H, W) in [0, 1]: how well the source shows what a flow samples: its visibility
    (1, H, W), times a ramp of its source area per pixel ``ratio`` (H, W; :func:`_area_ratio`,
    negated for a mirror flow, whose Jacobian determinant is negative) from MIRROR_RATIO[0]
    to MIRROR_RATIO[1]."""
    lo, hi = MIRROR_RATIO
    return visibility[0].clamp(0, 1) * ((ratio - lo) / (hi - lo)).clamp(0, 1)


def _chroma_distance(image: torch.Tensor, skin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) chromaticity distance of each pixel of a (3, H, W) image from the (3,) skin
    colour, and its brightness relative to the skin's."""
    total = image.sum(0).clamp_min(1e-3)
    ref = skin[:2] / skin.sum().clamp_min(1e-3)
    return (image[:2] / total - ref[:, None, None]).norm(dim=0), total / skin.sum().clamp_min(1e-3)


def _skin_likeness(image: torch.Tensor, skin: torch.Tensor) -> torch.Tensor:
    """(H, W) in [0, 1]: how much each pixel of a (3, H, W) image looks like the (3,) skin
    colour: its chromaticity within 0.04 of the skin's (0 beyond 0.08) and its brightness
    at least 0.65 of it (0 under 0.5: hair, a shadow, a cavity). Shading changes brightness
    much more than chromaticity, so a darker cheek still counts as skin, a blue sky not."""
    dist, bright = _chroma_distance(image, skin)
    return ((0.08 - dist) / 0.04).clamp(0, 1) * ((bright - 0.5) / 0.15).clamp(0, 1)


def _not_unlike_skin(image: torch.Tensor, skin: torch.Tensor) -> torch.Tensor:
    """(H, W) in [0, 1]: 0 only where a pixel is about as bright as skin (0.6 of it or more)
    and its chromaticity is plainly not skin's (beyond 0.12; 1 within 0.08): a sea or a sky,
    not the skin's own shadows, make-up or stubble, nor hair over it."""
    dist, bright = _chroma_distance(image, skin)
    unlike = ((dist - 0.08) / 0.04).clamp(0, 1) * ((bright - 0.5) / 0.1).clamp(0, 1)
    return 1 - unlike


class WarpFillGenerator:
    """Learning-free pass-through: the warp itself, holes filled.

    Pixels without a source correspondence are filled: hair, neck and background by
    reflecting the visible pixels of their own kind beside them into the hole (a push-pull
    average where there are none); an open mouth that the source
    does not show by the mean open mouth of the train clips (:mod:`rt_portrait.generator.mouth`) in
    the subject's skin tone; eye pixels that sample the source's iris although the target's
    iris has moved away, by the eye's own colours. Other face pixels keep the warp.

    ``mouth_prior=None`` (or inputs without ``landmarks``) falls back to a dark push-pull
    cavity of ``mouth_darkness``; ``mouth_style`` draws the prior (``teeth``: teeth, cavity and
    tongue inside an anti-aliased opening; ``strips``: the prior's mean strips over the hole's
    working pixels, as before session 13). ``mirror=False`` fills hair and background by push-pull
    alone (the fill before session 12); ``mirror_y_scale`` weights vertical distances in the
    search for pixels to reflect, ``soften`` (Gaussian sigma, working px) the reflected pixels.

    Hair, neck and background pixels that show the source's *face* (a sliver of its edge that
    the source saw edge-on, spread over the side of a turned head) are filled like holes
    (``stretch_at``, see :meth:`_stretched_face`; 0 keeps them, the fill before session 16), and
    a reflection takes only pixels that show their own kind in the source
    (``own_kind_donors``; False: any visible pixel of the kind, before session 16).

    Face pixels the source does not show, or shows only as a sliver seen edge-on (a source
    that looks aside, turned to the camera), take the source at their left-right mirror
    partner (``inputs.mirror``) where the source shows that one well, its colour matched to
    the visible face around them (``mirror_face``; see :meth:`_mirrored_face`); before
    session 17 they kept the warp, a ghost of whatever the source showed there.

    Background the source does not show is filled from the wall beside it also where it
    samples the source's hair or shell (``wall_from_head``): that is the old head left on the
    wall by a head that moved away (False: kept, as hair over hidden hair is, before session 21).
    """

    def __init__(
        self,
        mouth_darkness: float = 0.3,
        visible_at: float = 0.5,
        mouth_prior: MouthPrior | str | None = "default",
        template: Template | None = None,
        mirror: bool = True,
        mirror_y_scale: float = 2.0,
        soften: float = 1.0,
        mouth_style: str = "teeth",
        own_kind_donors: bool = True,
        stretch_at: float = 0.5,
        mirror_face: bool = True,
        wall_from_head: bool = True,
    ) -> None:
        self.mirror_face = mirror_face
        self.wall_from_head = wall_from_head
        self.own_kind_donors = own_kind_donors
        self.stretch_at = stretch_at
        self.mouth_darkness = mouth_darkness
        # A head turn, the largest motion, opens holes sideways: reflect the pixels beside a
        # hole rather than those above or below it (the body under a revealed background).
        self.mirror = mirror
        self.mirror_y_scale = mirror_y_scale
        self.soften = soften
        self.visible_at = visible_at
        if mouth_style not in MOUTH_STYLES:
            raise ValueError(f"unknown mouth style {mouth_style!r}; expected one of {MOUTH_STYLES}")
        self.mouth_style = mouth_style
        prior = load_mouth_prior() if isinstance(mouth_prior, str) else mouth_prior
        self.mouth_prior: MouthPrior | None = None if prior is None else replace(prior, style=mouth_style)
        self.template = template or load_template()
        # Skin colour per source. One generator serves every session (and, in the server,
        # every portrait) from several threads: entries are looked up under a lock and keyed
        # by tensor identity, checked through a weak reference, so a freed source whose
        # address (data_ptr) or id is reused can never hand its colour to another.
        self._skin_lock = threading.Lock()
        self._skins: OrderedDict[tuple[int, int], tuple[_Ref, _Ref, torch.Tensor | None]] = OrderedDict()

    def __call__(self, inputs: GeneratorInput) -> GeneratorOutput:
        warped = inputs.warped
        fields = inputs.fields
        alpha = torch.zeros_like(warped[:1])
        mirrored = self._mirrored_face(inputs) if self.mirror_face else None
        if mirrored is not None:  # the face fixed first: what follows fills around it
            (fv0, fv1, fu0, fu1), face_fill, face_weight = mirrored
            on = (slice(None), slice(fv0, fv1), slice(fu0, fu1))
            warped = warped.clone()
            warped[on] = torch.lerp(warped[on], face_fill, face_weight)
            alpha[on] = face_weight
        r = warped.shape[-1]
        margin = max(8, r // 32)
        # Every hole lies where the source is not visible, in an eye, or where the hair and
        # background show a stretched sliver of the source's face: work on that box only.
        active = fields.visibility[0] < 0.75 * self.visible_at
        stretched: torch.Tensor | None = None
        # the source label each pixel samples: once for the whole grid when the stretch check
        # and the donors read it beyond the holes' box, else for that box alone (below)
        sampled_all: torch.Tensor | None = None
        if inputs.source_labels is not None:
            active |= fields.labels == int(Region.EYES)
            if self.stretch_at > 0 or self.own_kind_donors:
                sampled_all = self._sampled_labels(inputs, (0, r, 0, r))
                assert sampled_all is not None
                stretched = self._stretched_face(inputs, sampled_all)
                if stretched is not None:
                    active |= stretched > 0
        outer = nonzero_box(active, margin=margin)
        if outer is None:
            return GeneratorOutput(face=warped, alpha=alpha)
        ov0, ov1, ou0, ou1 = outer
        sub = (slice(None), slice(ov0, ov1), slice(ou0, ou1))
        base = warped[sub]
        face, alpha_c = base, alpha[sub].clone()
        mouth: MouthPaint | None = None
        reflected: torch.Tensor | None = None
        vis = (fields.visibility[sub] / self.visible_at).clamp(0, 1)
        labels = fields.labels[ov0:ov1, ou0:ou1]
        sampled = (
            self._sampled_labels(inputs, outer) if sampled_all is None else sampled_all[ov0:ov1, ou0:ou1]
        )
        for region in (Region.HEAD_SHELL, Region.BACKGROUND, Region.MOUTH_INTERIOR, Region.EYES):
            mask = (labels == int(region))[None].float()
            if region == Region.EYES:
                # A gaze change shows the source iris twice: moved with the iris disc, and
                # where the eyeball or a lid still samples the source's iris. Those pixels
                # take the colours of the eye around them (sclera, lids) instead.
                if sampled is None:
                    continue
                on_iris = (sampled == int(Region.IRIS)) & (mask[0] > 0)
                near = nonzero_box(on_iris)
                if near is None:
                    continue
                if inputs.landmarks is not None:  # where the target's iris is, iris is right
                    v0, v1, u0, u1 = near
                    discs = iris_discs(
                        inputs.landmarks, self.template, r, (ov0 + v0, ov0 + v1, ou0 + u0, ou0 + u1)
                    )
                    on_iris[v0:v1, u0:u1] &= ~discs
                on_iris = on_iris[None].float()
                hole, weight = on_iris, mask * (1 - on_iris)
            elif region == Region.MOUTH_INTERIOR:
                hole, weight = (1 - vis) * mask, vis
            else:
                # Hair, neck and background that the source does not show sample whatever
                # hid them there (often the face: a ghost of it): fill them from visible pixels
                # of the same kind. Hair sampling hidden hair still shows hair: keep the warp;
                # a wall sampling hair shows the old head (since session 21: filled).
                # Face pixels without a source (a cheek turning into view) keep the warp too,
                # which stretches the nearby skin: more plausible than a blur, and seam-free.
                hole, weight = (1 - vis) * mask, vis * mask
                if sampled is not None:
                    hole = hole * (sampled != int(Region.BACKGROUND))
                    if region == Region.HEAD_SHELL or not self.wall_from_head:
                        hole = hole * (sampled != int(Region.HEAD_SHELL))
                if stretched is not None:
                    st = mask * stretched[None, ov0:ov1, ou0:ou1]
                    hole, weight = torch.maximum(hole, st), weight * (1 - st)
            box = nonzero_box(hole > 0.25, margin=margin)
            if box is None:
                continue
            reflect = self.mirror and region in (Region.HEAD_SHELL, Region.BACKGROUND)
            v0, v1, u0, u1 = box
            crop = (slice(None), slice(v0, v1), slice(u0, u1))
            fill = None
            if region == Region.MOUTH_INTERIOR:
                mouth = self._paint_mouth(
                    inputs, (ov0 + v0, ov0 + v1, ou0 + u0, ou0 + u1), hole[0, v0:v1, u0:u1]
                )
                if mouth is not None:
                    fill = mouth.painted
                    hole[:, v0:v1, u0:u1] = mouth.hole  # the anti-aliased opening (teeth style)
            elif reflect:
                fill = self._mirror_fill(
                    inputs, region, (ov0 + v0, ov0 + v1, ou0 + u0, ou0 + u1), sampled_all
                )
            if fill is None:
                fill = push_pull_fill(base[crop], weight[crop])
                if region == Region.MOUTH_INTERIOR:  # no prior: a dark cavity, darker deep inside
                    fill = fill * self.mouth_darkness * (0.6 + 0.4 * vis[crop])
            if face is base:
                face = base.clone()
            h = hole[crop]
            face[crop] = face[crop] * (1 - h) + fill * h
            alpha_c[crop] = torch.maximum(alpha_c[crop], h)
            if reflect:
                reflected = torch.zeros_like(alpha_c) if reflected is None else reflected
                reflected[crop] = torch.maximum(reflected[crop], h)
        if face is base:
            return GeneratorOutput(face=warped, alpha=alpha)
        if reflected is not None and self.soften > 0:
            # Hair and background fills meet along the working grid's label edges, which the
            # frame shows as a staircase: soften the reflected pixels by a pixel or so, among
            # themselves (the face's own outline stays as sharp as the tracker saw it), over
            # their box and the kernel's reach around it
            rb = nonzero_box(reflected > 0, margin=max(1, int(3 * self.soften + 0.5)))
            if rb is not None:
                cut = (slice(None), slice(rb[0], rb[1]), slice(rb[2], rb[3]))
                w = reflected[cut]
                m = (w > 0).to(face.dtype)[None]
                blurred = gaussian_blur(torch.cat((face[cut][None] * m, m), 1), self.soften)[0]
                face[cut] = torch.lerp(face[cut], blurred[:3] / blurred[3:].clamp_min(1e-6), w)
        out = warped.clone()
        out[sub] = face
        alpha[sub] = alpha_c
        return GeneratorOutput(face=out, alpha=alpha, mouth=mouth)

    def _mirrored_face(
        self, inputs: GeneratorInput
    ) -> tuple[tuple[int, int, int, int], torch.Tensor, torch.Tensor] | None:
        """The face where the source shows it badly, taken from the mirror side: (box, fill
        (3, h, w), weight (1, h, w)) over the working-grid box (v0, v1, u0, u1), or None when
        the face needs none (under MIRROR_MIN_AREA of it is shown badly), or without a mirror
        flow or source labels.

        A face pixel is shown badly where the source hides it (visibility) or shows it as a
        sliver seen edge-on (the flow's source area ratio under MIRROR_RATIO[1], none under
        MIRROR_RATIO[0]), or, on skin seen obliquely, where the warp samples something
        plainly not skin (the fitted mesh's silhouette reaches past the real one, onto the
        background). A source that looks 40° aside shows its far cheek, eye and brow like
        that; turned to the camera they came out as a ghost stretched over the background.
        Such a pixel takes the source at its mirror partner (a mirror flow folds, hence the
        ratio's sign) where that one is shown well and, on skin, looks like skin (a strand of
        hair over the near cheek would become a dark spot on the far one). The mirrored
        texture is shifted by the smooth difference between the two sides where both are
        shown well, so light falling differently on the two cheeks leaves no edge. Face pixels
        the source hides and whose partner it does not show well take a push-pull average of
        the face around them; a visible sliver without a partner keeps the warp.

        Talking heads near the source's pose show badly only a few pixels (the sides of the
        nose, a closing lid), which the gate leaves alone: measured on ``val``, mirroring
        those cost up to 2.8 dB on a frontal clip."""
        if inputs.mirror is None or inputs.source_labels is None:
            return None
        fields = inputs.fields
        labels = fields.labels
        facey = torch.zeros_like(labels, dtype=torch.bool)
        for region in MIRROR_REGIONS:
            facey |= labels == int(region)
        box = nonzero_box(facey, margin=2)
        if box is None:
            return None
        v0, v1, u0, u1 = box
        cut = (slice(None), slice(v0, v1), slice(u0, u1))
        face = facey[v0:v1, u0:u1].float()
        # the face's rim keeps the warp: the fitted oval reaches past the real outline, and a
        # mirrored rim is a band of skin over the hair or the background beside the face
        rim = max(2, labels.shape[-1] // 64)
        inner = erode(face, rim)
        warped = inputs.warped[cut]
        ratio = _area_ratio(fields.flow[cut])
        shown = _shown_well(fields.visibility[cut], ratio) * face
        skin = self._skin_colour(inputs.source, inputs.source_labels)
        on_skin = labels[v0:v1, u0:u1] == int(Region.SKIN)
        if skin is not None:
            oblique = ratio < MIRROR_OBLIQUE
            shown = shown * torch.where(on_skin & oblique, _not_unlike_skin(warped, skin), 1.0)
        # only regions: the thin bands along the silhouette and under the lips, and the
        # specks a talking head shows badly, keep the warp (an opening of the mask)
        half = MIRROR_OPENING // 2
        poor = dilate(erode(1 - shown, half), half) * inner
        if float((poor > 0.5).sum()) < MIRROR_MIN_AREA * float(face.sum()):
            return None
        mirror = inputs.mirror()
        partner = _shown_well(mirror.visibility[cut], -_area_ratio(mirror.flow[cut])) * face
        mwarp = warp_working(inputs.source, mirror.flow)[cut]
        if skin is not None:
            partner = partner * torch.where(on_skin, _skin_likeness(mwarp, skin), 1.0)
        shift = push_pull_fill(warped - mwarp, (shown * partner)[None])
        fill = mwarp + gaussian_blur(shift[None], 2.0)[0]
        weight = poor * partner
        rest = (1 - weight) * poor * (fields.visibility[0, v0:v1, u0:u1] < self.visible_at)
        if bool((rest > 0).any()):
            around = push_pull_fill(warped, shown[None])
            total = (weight + rest).clamp_min(1e-6)
            fill = fill * (weight / total) + around * (rest / total)
            weight = weight + rest
        return box, fill.clamp(0, 1), weight.clamp(0, 1)[None]

    def _stretched_face(self, inputs: GeneratorInput, sampled_all: torch.Tensor) -> torch.Tensor | None:
        """(R, R) in [0, 1]: hair, neck and background pixels that sample the source's face
        where the source saw their surface edge-on. Visible, but their texture is a sliver of
        the face's edge spread over the side of the head (a flat skin patch with the grid's
        staircase at a large turn). 1 beyond a band of ``r / 64`` px around the target's face;
        within it 1 where the source area per pixel (:func:`source_area_ratio`) is below half of
        ``stretch_at``, fading to 0 at ``stretch_at``. None when off, without source labels or
        with nothing to fill. ``sampled_all``: :meth:`_sampled_labels` over the whole grid."""
        if self.stretch_at <= 0:
            return None
        fields = inputs.fields
        r = fields.labels.shape[-1]
        band = max(2, r // 64)
        head = nonzero_box(fields.labels != int(Region.BACKGROUND), margin=2 * band + 2)
        if head is None:
            return None
        h0, h1, w0, w1 = head
        labels = fields.labels[h0:h1, w0:w1]
        sampled = sampled_all[h0:h1, w0:w1]
        outside = (labels == int(Region.HEAD_SHELL)) | (labels == int(Region.BACKGROUND))
        on_face = outside & (sampled != int(Region.HEAD_SHELL)) & (sampled != int(Region.BACKGROUND))
        box = nonzero_box(on_face, margin=band + 1)
        if box is None:
            return None
        v0, v1, u0, u1 = box
        out_c = outside[v0:v1, u0:u1]
        v0, v1, u0, u1 = v0 + h0, v1 + h0, u0 + w0, u1 + w0  # on the grid
        # the flow jumps across the face's outline: differences that straddle it are no
        # stretch (NaN there, hence 0), so the outline's anti-aliased band stays
        ratio = source_area_ratio(fields.flow[:, v0:v1, u0:u1].masked_fill(~out_c, float("nan")))
        st = ((self.stretch_at - ratio) / (0.5 * self.stretch_at)).clamp(0, 1).nan_to_num(0.0)
        # beyond a band around the target's own face, face texture there is always a stretch
        face = (~out_c).float()[None, None]
        k = 2 * band + 1
        near = F.max_pool2d(F.max_pool2d(face, (1, k), 1, (0, band)), (k, 1), 1, (band, 0))[0, 0] > 0
        out = torch.zeros_like(fields.visibility[0])
        out[v0:v1, u0:u1] = (
            torch.where(near, st, torch.ones_like(st)) * on_face[v0 - h0 : v1 - h0, u0 - w0 : u1 - w0]
        )
        return out

    def _mirror_fill(
        self,
        inputs: GeneratorInput,
        region: Region,
        box: tuple[int, int, int, int],
        sampled_all: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The warp over the working-grid ``box`` filled by reflection from the visible pixels
        of ``region`` (:func:`mirror_fill`) around it, or None where there are none.

        A smooth average of hair, or of a background and the body below it, reads as a flat
        hole at a large head turn; the reflection continues the texture beside the hole, so
        revealed hair looks like hair and meets the visible hair without an edge. Donors are
        looked for up to half the box's size beyond it, as far as a reflection reaches."""
        v0, v1, u0, u1 = box
        r = inputs.warped.shape[-1]
        reach = max(v1 - v0, u1 - u0) // 2 + 2
        e0, e1, f0, f1 = max(0, v0 - reach), min(r, v1 + reach), max(0, u0 - reach), min(r, u1 + reach)
        fields = inputs.fields
        donor = (fields.visibility[0, e0:e1, f0:f1] >= self.visible_at) & (
            fields.labels[e0:e1, f0:f1] == int(region)
        )
        if self.own_kind_donors and sampled_all is not None:
            # a visible shell pixel near the jaw may show the source's cheek (the shell there
            # follows the jaw): reflecting it paints a flat skin patch over the ear
            donor &= sampled_all[e0:e1, f0:f1] == int(region)
        filled = mirror_fill(inputs.warped[:, e0:e1, f0:f1], donor, self.mirror_y_scale)
        return None if filled is None else filled[:, v0 - e0 : v1 - e0, u0 - f0 : u1 - f0]

    def _paint_mouth(
        self, inputs: GeneratorInput, box: tuple[int, int, int, int], hole: torch.Tensor
    ) -> MouthPaint | None:
        """The mouth prior over the working-grid ``box`` in the source's skin tone, blended in
        by ``hole``; None without a prior, landmarks or source labels."""
        if self.mouth_prior is None or inputs.landmarks is None or inputs.source_labels is None:
            return None
        skin = self._skin_colour(inputs.source, inputs.source_labels)
        if skin is None:
            return None
        tpl = self.template
        try:
            frame = mouth_frame(
                inputs.landmarks.detach().cpu().numpy(),
                tpl.group("inner_lip_upper"),
                tpl.group("inner_lip_lower"),
                tpl.group("inner_mouth_corners"),
            )
        except ValueError:  # a degenerate mouth has no interior to paint
            return None
        v0, v1, u0, u1 = box
        if self.mouth_style == "strips":
            ys, xs = torch.nonzero(hole > 0.5, as_tuple=True)
            frame = visible_opening(frame, (xs + u0 + 0.5).cpu().numpy(), (ys + v0 + 0.5).cpu().numpy())
            return MouthPaint.over_box(self.mouth_prior, frame, skin, box, hole)
        # Teeth hang from the upper lip: the lip lines are moved onto the edges of the whole
        # interior the target shows (a source with its mouth open shows teeth there itself, and the hole is
        # only the part it lacks), and the painted weight is the opening's anti-aliased area
        # within the (slightly softened) hole, so that no outline follows the grid's staircase.
        interior = inputs.fields.labels[v0:v1, u0:u1] == int(Region.MOUTH_INTERIOR)
        ys, xs = torch.nonzero(interior | (hole > 0.5), as_tuple=True)
        frame = fit_opening(frame, (xs + u0 + 0.5).cpu().numpy(), (ys + v0 + 0.5).cpu().numpy())
        y, x = box_centres(box, hole.device)
        soft = (2 * gaussian_blur(hole[None, None], 0.7)[0, 0]).clamp(0, 1)
        return MouthPaint.over_box(
            self.mouth_prior, frame, skin, box, opening_coverage(frame, x, y) * soft, crisp=True
        )

    def _skin_colour(self, source: torch.Tensor, source_labels: torch.Tensor) -> torch.Tensor | None:
        """(3,) median colour of the source's skin pixels (cached per source), or None."""
        key = (id(source), id(source_labels))
        with self._skin_lock:
            hit = self._skins.get(key)
            if hit is not None and hit[0]() is source and hit[1]() is source_labels:
                self._skins.move_to_end(key)
                return hit[2]
        px = source[:, source_labels == int(Region.SKIN)]
        skin = px.median(dim=1).values if px.shape[1] else None
        with self._skin_lock:
            self._skins[key] = (weakref.ref(source), weakref.ref(source_labels), skin)
            self._skins.move_to_end(key)
            while len(self._skins) > 32:
                self._skins.popitem(last=False)
        return skin

    @staticmethod
    def _sampled_labels(inputs: GeneratorInput, box: tuple[int, int, int, int]) -> torch.Tensor | None:
        """The source label at the pixel each target pixel of the working-grid ``box``
        (v0, v1, u0, u1) samples, or None without source labels."""
        if inputs.source_labels is None:
            return None
        return sampled_at(inputs.source_labels, inputs.fields.flow, box)
