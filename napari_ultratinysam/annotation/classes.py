"""Class lists and colour maps of the annotator.

The annotator starts with one neutral class, "object"; CamVid's 11 classes are a preset. Colours: each object in
its class colour, or each instance in its own (a deterministic hue walk).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Sequence

from napari_ultratinysam.data.classes import CAMVID_CLASSES as CAMVID_NAMES
from napari_ultratinysam.data.classes import CAMVID_COLORS


@dataclass(frozen=True)
class ClassSpec:
    name: str
    color: tuple[int, int, int]


# the CamVid table is data's (data.classes), so the annotator's preset and the dataset reader cannot drift apart
CAMVID_CLASSES: tuple[ClassSpec, ...] = tuple(ClassSpec(n, c) for n, c in zip(CAMVID_NAMES, CAMVID_COLORS))

# a neutral start: annotating coins or cells should not begin with "Sky" selected
DEFAULT_CLASSES: tuple[ClassSpec, ...] = (ClassSpec("object", (255, 140, 0)),)
CLASS_PRESETS: dict[str, tuple[ClassSpec, ...]] = {"object": DEFAULT_CLASSES, "CamVid (11 classes)": CAMVID_CLASSES}


def preset_classes(name: str) -> list[ClassSpec]:
    """The class list of a preset (``CLASS_PRESETS``); ValueError names the known ones."""
    if name not in CLASS_PRESETS:
        raise ValueError(f"class preset: expected one of {', '.join(CLASS_PRESETS)}, got {name!r}")
    return list(CLASS_PRESETS[name])


UNCLASSIFIED_RGBA = (0.85, 0.85, 0.85, 1.0)  # objects painted by hand with an id that has no class


def instance_color(object_id: int) -> tuple[float, float, float, float]:
    """A distinct, deterministic colour per instance id (golden-ratio hue walk)."""
    h = (object_id * 0.618033988749895) % 1.0
    s = 0.65 + 0.35 * ((object_id * 7) % 3) / 2
    r, g, b = colorsys.hsv_to_rgb(h, s, 0.95)
    return (r, g, b, 1.0)


def class_color_dict(object_class: dict[int, int], classes: Sequence[ClassSpec]) -> dict:
    """{id: RGBA float} for napari's DirectLabelColormap: each object in its class colour; 0 transparent;
    ``None`` (any other id, e.g. painted by hand) light grey."""
    out: dict = {0: (0.0, 0.0, 0.0, 0.0), None: UNCLASSIFIED_RGBA}
    for oid, ci in object_class.items():
        if 0 <= ci < len(classes):
            r, g, b = classes[ci].color
            out[int(oid)] = (r / 255.0, g / 255.0, b / 255.0, 1.0)
    return out


def instance_color_dict(ids: Sequence[int]) -> dict:
    out: dict = {0: (0.0, 0.0, 0.0, 0.0), None: UNCLASSIFIED_RGBA}
    for oid in ids:
        if oid:
            out[int(oid)] = instance_color(int(oid))
    return out


def random_class_color(seed: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((seed * 0.618033988749895 + 0.1) % 1.0, 0.7, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)
