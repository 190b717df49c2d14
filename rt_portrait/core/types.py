"""Core types shared by every stage: the landmark count of the face mesh, and the region
labels used by the head model (per vertex), the flow (per pixel) and the generator (masks)."""

from __future__ import annotations

from enum import IntEnum

NUM_LANDMARKS = 478  # mediapipe face mesh with iris refinement


class Region(IntEnum):
    BACKGROUND = 0
    SKIN = 1
    HEAD_SHELL = 2  # forehead/hair, ears, back of the skull, neck: rigid with the head
    EYES = 3  # eyelids and eyeballs (the whole eye region is EYES | IRIS)
    BROWS = 4
    NOSE = 5
    LIPS = 6
    MOUTH_INTERIOR = 7
    IRIS = 8  # the iris discs (scene points only: the template's iris vertices are EYES)


NUM_REGIONS = len(Region)
