"""Pure annotation logic behind the napari annotator: no Qt, no napari.

Everything the annotator widget does to arrays lives here, so it is testable with plain numpy:

- ``rc_to_xy`` / ``box_from_rect``: the ONE conversion from napari layer coordinates (row, col) = (y, x) to the
  predictor's image-pixel (x, y) convention;
- ``Prompt`` (points, labels, box) and ``Candidates`` (multimask results, best first, cycling);
- ``PreviewBuffer``: writes a mask into an existing preview array in place, touching only the changed region;
- ``AnnotationModel``: instance-id map + id -> class dict + an undo/redo stack of commits, deletions and re-classing.
  Each edit stores only the pixels it changed and their previous values; undo/redo restores a pixel only while it
  still holds the value the edit wrote, so brush/eraser edits made in napari in between are left intact;
- class lists (the annotator starts with one neutral class, "object"; CamVid's 11 classes are a preset) and colour
  maps (class colours, instance colours);
- ``PredictorSession``: the predictor plus the per-image embedding bookkeeping, used only on the worker thread;
- ``model_status_text``: what the model picker says, so it never names a backend that is not in use;
- ``DatasetExportRequest``: the "Export dataset" form, checked, and its call of the dataset export.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import numpy as np

# --------------------------------------------------------------------------------------------------- coordinates


def rc_to_xy(rc: Sequence[float] | np.ndarray) -> np.ndarray:
    """napari layer coordinates (..., 2) as (row, col) -> predictor image pixels (..., 2) as (x, y).

    The predictor takes (x, y) = (col, row); napari stores (row, col). This is the only place that swaps them.
    """
    a = np.asarray(rc, dtype=np.float32)
    if a.shape[-1] != 2:
        raise ValueError(f"rc_to_xy: expected (..., 2) (row, col) coordinates, got shape {a.shape}")
    return a[..., ::-1].copy()


def box_from_rect(vertices_rc: np.ndarray) -> np.ndarray:
    """A napari rectangle (its vertices, (4, 2) as (row, col), any order/rotation-free) -> (x0, y0, x1, y1)."""
    xy = rc_to_xy(np.asarray(vertices_rc, dtype=np.float32)[:, -2:])
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def clip_box(box: np.ndarray, hw: tuple[int, int]) -> np.ndarray | None:
    """Clip a box (x0, y0, x1, y1) to an image of (h, w); None when nothing of it is left."""
    h, w = hw
    b = np.asarray(box, dtype=np.float32).copy()
    b[[0, 2]] = np.clip(b[[0, 2]], 0, w - 1)
    b[[1, 3]] = np.clip(b[[1, 3]], 0, h - 1)
    if b[2] - b[0] < 1 or b[3] - b[1] < 1:
        return None
    return b


def inside(rc: Sequence[float], hw: tuple[int, int]) -> bool:
    """Whether a (row, col) position falls on a pixel of an image of (h, w)."""
    r, c = float(rc[0]), float(rc[1])
    return -0.5 <= r < hw[0] - 0.5 and -0.5 <= c < hw[1] - 0.5


# -------------------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompt:
    """What the predictor is asked: points (N, 2) as (x, y) image pixels, labels (N,) 1/0, optional box."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    box: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return len(self.points) == 0 and self.box is None

    @classmethod
    def from_layers(cls, points_rc: np.ndarray, positive: Sequence[bool] | np.ndarray, box_rect_rc=None,
                    image_hw: tuple[int, int] | None = None) -> "Prompt":
        """Build from napari data: Points data (N, >=2) rows/cols last, a positive flag per point, a rectangle."""
        pts = np.asarray(points_rc, dtype=np.float32)
        xy = rc_to_xy(pts.reshape(len(pts), -1)[:, -2:]) if pts.size else np.zeros((0, 2), np.float32)
        lab = np.asarray(positive, dtype=bool).astype(np.int64).reshape(-1)
        if len(lab) != len(xy):
            raise ValueError(f"Prompt: {len(xy)} points but {len(lab)} labels")
        box = None
        if box_rect_rc is not None:
            box = box_from_rect(box_rect_rc)
            if image_hw is not None:
                box = clip_box(box, image_hw)
        return cls(xy, lab, box)

    def predictor_kwargs(self) -> dict:
        return {
            "points": self.points if len(self.points) else None,
            "labels": self.labels if len(self.labels) else None,
            "box": self.box,
        }


class Candidates:
    """The masks of one prediction, best first, with a cursor for multimask cycling.

    Built from full masks (K, H, W), or from a predictor result whose ``mask(i)`` makes candidate ``i`` on demand
    (our :class:`~napari_ultratinysam.inference.predictor.Prediction`, which keeps each mask it made):
    then only the masks actually shown are upsampled.
    """

    def __init__(self, masks: np.ndarray | None, scores: np.ndarray, lowres: np.ndarray | None = None,
                 get_mask=None, best_first: bool = False):
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        # best first: as given when the predictor says so (a learned pick), else by score
        order = np.arange(len(scores)) if best_first else np.argsort(-scores, kind="stable")
        if masks is not None:
            masks = np.asarray(masks, dtype=bool)
            if masks.ndim == 2:
                masks = masks[None]
            if len(scores) != len(masks):
                raise ValueError(f"Candidates: {len(masks)} masks but {len(scores)} scores")
            masks = masks[order]
            get_mask = masks.__getitem__
        elif get_mask is None:
            raise ValueError("Candidates: masks or get_mask is required")
        else:
            inner = get_mask
            get_mask = lambda i: np.asarray(inner(int(order[i])), dtype=bool)  # noqa: E731
        self._get = get_mask
        self.scores = scores[order]
        self.lowres = None if lowres is None else np.asarray(lowres, dtype=np.float32)[order]
        self.index = 0

    @classmethod
    def from_result(cls, r) -> "Candidates":
        lowres = getattr(r, "lowres", None)
        if callable(getattr(r, "mask", None)):
            return cls(None, r.scores, lowres, get_mask=r.mask, best_first=getattr(r, "best_first", False))
        return cls(r.masks, r.scores, lowres, best_first=getattr(r, "best_first", False))

    def __len__(self) -> int:
        return len(self.scores)

    def cycle(self, step: int = 1) -> int:
        self.index = (self.index + step) % len(self)
        return self.index

    def mask_at(self, i: int) -> np.ndarray:
        return self._get(i)

    @property
    def masks(self) -> np.ndarray:
        return np.stack([self.mask_at(i) for i in range(len(self))])

    @property
    def mask(self) -> np.ndarray:
        return self.mask_at(self.index)

    @property
    def score(self) -> float:
        return float(self.scores[self.index])

    @property
    def current_lowres(self) -> np.ndarray | None:
        return None if self.lowres is None else self.lowres[self.index]

    def describe(self) -> str:
        return f"mask {self.index + 1}/{len(self)}  score {self.score:.3f}"


# -------------------------------------------------------------------------------------------------------- preview


def mask_bbox(mask: np.ndarray) -> tuple[slice, slice] | None:
    """Bounding box of a 2-D bool mask as slices; None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _union(a: tuple[slice, slice] | None, b: tuple[slice, slice] | None) -> tuple[slice, slice] | None:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))  # type: ignore[return-value]


class PreviewBuffer:
    """Writes preview masks into an existing array (the preview layer's data) in place.

    Only the union of the previous and the new mask's bounding boxes is touched. ``show`` returns that region (or
    None when nothing changed) so the caller refreshes the layer once.
    """

    def __init__(self, data: np.ndarray, value: int = 1):
        self.data = data
        self.value = value
        self._last: tuple[tuple, tuple[slice, slice]] | None = None  # (plane, bbox)

    def clear(self) -> tuple | None:
        if self._last is None:
            return None
        plane, bb = self._last
        self.data[plane + bb] = 0
        self._last = None
        return plane + bb

    def show(self, mask: np.ndarray | None, plane: tuple = ()) -> tuple | None:
        if mask is None:
            return self.clear()
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.data.shape[len(plane):]:
            raise ValueError(f"preview: mask shape {mask.shape} does not match the image "
                             f"{self.data.shape[len(plane):]}")
        bb = mask_bbox(mask)
        if self._last is not None and self._last[0] != plane:
            self.clear()
        old = self._last[1] if self._last is not None else None
        region = _union(old, bb)
        if region is None:
            return None
        view = self.data[plane + region]
        view[...] = 0
        if bb is not None:
            rel = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(bb, region))
            view[rel][mask[bb]] = self.value
            self._last = (plane, bb)
        else:
            self._last = None
        return plane + region

    @property
    def showing(self) -> bool:
        return self._last is not None


# ------------------------------------------------------------------------------------------------ classes, colours


@dataclass(frozen=True)
class ClassSpec:
    name: str
    color: tuple[int, int, int]


CAMVID_CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec("Sky", (128, 128, 128)),
    ClassSpec("Building", (128, 0, 0)),
    ClassSpec("Pole", (192, 192, 128)),
    ClassSpec("Road", (128, 64, 128)),
    ClassSpec("Pavement", (60, 40, 222)),
    ClassSpec("Tree", (128, 128, 0)),
    ClassSpec("SignSymbol", (192, 128, 128)),
    ClassSpec("Fence", (64, 64, 128)),
    ClassSpec("Car", (64, 0, 128)),
    ClassSpec("Pedestrian", (64, 64, 0)),
    ClassSpec("Bicyclist", (0, 128, 192)),
)

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


# --------------------------------------------------------------------------------------------- annotation + undo


@dataclass
class Edit:
    """One undoable change: pixels (inside ``region`` where ``mask``) went from ``before`` to ``after``; class
    assignments went from ``classes_before`` to ``classes_after`` (None = no entry)."""

    kind: str  # "commit" | "delete" | "reclass" | "propagate"
    object_id: int
    region: tuple[slice, ...] | None = None
    mask: np.ndarray | None = None
    before: np.ndarray | None = None
    after: np.ndarray | None = None
    classes_before: dict[int, int | None] = field(default_factory=dict)
    classes_after: dict[int, int | None] = field(default_factory=dict)


class AnnotationModel:
    """Instance annotations on one image (2-D) or stack (3-D, edited plane by plane).

    ``labels`` is modified in place (pass the napari Labels layer's data array); ``object_class`` maps id -> class
    index into ``classes``. Every method that changes pixels returns the region it touched (or None).
    """

    def __init__(self, labels: np.ndarray, classes: Sequence[ClassSpec] = CAMVID_CLASSES,
                 object_class: dict[int, int] | None = None, max_undo: int = 200):
        if labels.dtype.kind not in "ui":
            raise ValueError(f"annotations: the labels array must be integer, got {labels.dtype}")
        self.labels = labels
        self.classes: list[ClassSpec] = list(classes)
        self.object_class: dict[int, int] = dict(object_class or {})
        self.max_undo = int(max_undo)
        self._undo: list[Edit] = []
        self._redo: list[Edit] = []

    # ---- queries
    def new_id(self) -> int:
        top = int(self.labels.max()) if self.labels.size else 0
        if self.object_class:
            top = max(top, max(self.object_class))
        nid = top + 1
        if nid > np.iinfo(self.labels.dtype).max:
            raise ValueError(f"annotations: no free instance id left in dtype {self.labels.dtype}")
        return nid

    def object_at(self, plane: tuple, row: int, col: int) -> int:
        h, w = self.labels.shape[-2:]
        if not (0 <= row < h and 0 <= col < w):
            return 0
        return int(self.labels[plane + (row, col)])

    def class_of(self, object_id: int) -> int | None:
        return self.object_class.get(int(object_id))

    def class_name(self, object_id: int) -> str:
        ci = self.class_of(object_id)
        return self.classes[ci].name if ci is not None and 0 <= ci < len(self.classes) else "unclassified"

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    # ---- edits
    def commit(self, mask: np.ndarray, class_index: int, plane: tuple = (),
               overwrite: bool = False) -> tuple[int, tuple]:
        """Write ``mask`` as a new object of ``class_index`` into ``plane``. Without ``overwrite`` only unlabelled
        pixels are taken. Returns (new id, region touched); raises ValueError if nothing would be written."""
        self._check_class(class_index)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.labels.shape[len(plane):]:
            raise ValueError(f"commit: mask shape {mask.shape} does not match the annotations {self.labels.shape}")
        bb = mask_bbox(mask)
        if bb is None:
            raise ValueError("commit: the mask is empty")
        region = plane + bb
        cur = self.labels[region]
        m = mask[bb].copy()
        if not overwrite:
            m &= cur == 0
        if not m.any():
            raise ValueError("commit: every pixel of the mask already belongs to an object (enable overwrite)")
        oid = self.new_id()
        before = cur[m].copy()
        cur[m] = oid
        edit = Edit("commit", oid, region, m, before, np.full(before.shape, oid, self.labels.dtype),
                    classes_before={oid: None}, classes_after={oid: int(class_index)})
        self.object_class[oid] = int(class_index)
        self._push(edit)
        return oid, region

    def commit_many(self, masks: Sequence[np.ndarray], class_index: int, plane: tuple = (),
                    overwrite: bool = False) -> tuple[list[int], tuple]:
        """Write ``masks`` as new objects of ``class_index``, in order, as ONE undo step (accepting every
        proposal). A mask left empty by the ones before it (or by existing objects, without ``overwrite``) is
        skipped. Returns (new ids, region touched); raises ValueError if nothing would be written."""
        self._check_class(class_index)
        masks = [np.asarray(m, dtype=bool) for m in masks]
        shape = self.labels.shape[len(plane):]
        bb = None
        for m in masks:
            if m.shape != shape:
                raise ValueError(f"commit: mask shape {m.shape} does not match the annotations {self.labels.shape}")
            bb = _union(bb, mask_bbox(m))
        if bb is None:
            raise ValueError("commit: the masks are empty")
        region = plane + bb
        cur = self.labels[region]
        old = cur.copy()
        ids: list[int] = []
        nid = self.new_id()
        for m in masks:
            m = m[bb] & (True if overwrite else cur == 0)
            if overwrite:
                m &= ~np.isin(cur, ids)  # an earlier mask of this batch keeps its pixels
            if not m.any():
                continue
            if nid > np.iinfo(self.labels.dtype).max:
                raise ValueError(f"annotations: no free instance id left in dtype {self.labels.dtype}")
            cur[m] = nid
            ids.append(nid)
            nid += 1
        if not ids:
            raise ValueError("commit: every pixel of the masks already belongs to an object (enable overwrite)")
        changed = cur != old
        self.object_class.update({oid: int(class_index) for oid in ids})
        self._push(Edit("commit", ids[0], region, changed, old[changed], cur[changed].copy(),
                        classes_before={oid: None for oid in ids},
                        classes_after={oid: int(class_index) for oid in ids}))
        return ids, region

    def set_planes(self, object_id: int, masks: dict[int, np.ndarray], overwrite: bool = False) -> tuple | None:
        """Make ``masks`` ({plane index: (H, W) bool}) the pixels of an existing object on those planes of a stack
        (a propagation): its other pixels there are cleared; without ``overwrite`` other objects' pixels are kept.
        One undo step for all the planes. Returns the region touched (None: nothing changed)."""
        oid = int(object_id)
        if oid not in self.object_class:
            raise ValueError(f"propagate: object #{oid} does not exist")
        if self.labels.ndim != 3:
            raise ValueError(f"propagate: the annotations are not a stack (shape {self.labels.shape})")
        if not masks:
            return None
        n, shape = self.labels.shape[0], self.labels.shape[1:]
        for i, m in masks.items():
            if not 0 <= int(i) < n:
                raise ValueError(f"propagate: plane {i} is outside the stack (0..{n - 1})")
            if np.shape(m) != shape:
                raise ValueError(f"propagate: mask of plane {i} has shape {np.shape(m)}, the slices {shape}")
        z0, z1 = min(masks), max(masks) + 1
        sub = self.labels[z0:z1]
        want = np.zeros(sub.shape, bool)
        mine = np.zeros(sub.shape, bool)
        for i, m in masks.items():
            want[i - z0] = np.asarray(m, dtype=bool)
            mine[i - z0] = sub[i - z0] == oid
        if not overwrite:
            want &= (sub == 0) | mine
        change = want != mine
        if not change.any():
            return None
        bb = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(change))
        m = change[bb]
        cur = sub[bb]
        before = cur[m].copy()
        after = np.where(want[bb][m], oid, 0).astype(self.labels.dtype)
        cur[m] = after
        region = (slice(bb[0].start + z0, bb[0].stop + z0),) + bb[1:]
        self._push(Edit("propagate", oid, region, m, before, after))
        return region

    def delete(self, object_id: int) -> tuple | None:
        """Remove an object everywhere (all planes). Returns the region touched."""
        oid = int(object_id)
        if oid == 0:
            raise ValueError("delete: no object selected")
        hit = self.labels == oid
        region = None
        m = before = after = None
        if hit.any():
            idx = np.nonzero(hit)
            region = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
            m = hit[region]
            before = self.labels[region][m].copy()
            after = np.zeros_like(before)
            sub = self.labels[region]
            sub[m] = 0
        elif oid not in self.object_class:
            raise ValueError(f"delete: object #{oid} does not exist")
        edit = Edit("delete", oid, region, m, before, after,
                    classes_before={oid: self.object_class.get(oid)}, classes_after={oid: None})
        self.object_class.pop(oid, None)
        self._push(edit)
        return region

    def set_class(self, object_id: int, class_index: int) -> None:
        oid = int(object_id)
        self._check_class(class_index)
        if oid == 0:
            raise ValueError("set class: no object selected")
        old = self.object_class.get(oid)
        if old == class_index:
            return
        self.object_class[oid] = int(class_index)
        self._push(Edit("reclass", oid, classes_before={oid: old}, classes_after={oid: int(class_index)}))

    def undo(self) -> Edit | None:
        if not self._undo:
            return None
        e = self._undo.pop()
        self._apply(e, forward=False)
        self._redo.append(e)
        return e

    def redo(self) -> Edit | None:
        if not self._redo:
            return None
        e = self._redo.pop()
        self._apply(e, forward=True)
        self._undo.append(e)
        return e

    # ---- classes
    def add_class(self, name: str, color: tuple[int, int, int] | None = None) -> int:
        name = name.strip()
        if not name:
            raise ValueError("class name must not be empty")
        if any(c.name == name for c in self.classes):
            raise ValueError(f"class {name!r} already exists")
        self.classes.append(ClassSpec(name, tuple(color) if color else random_class_color(len(self.classes))))
        return len(self.classes) - 1

    def rename_class(self, index: int, name: str) -> None:
        self._check_class(index)
        name = name.strip()
        if not name:
            raise ValueError("class name must not be empty")
        if any(c.name == name for i, c in enumerate(self.classes) if i != index):
            raise ValueError(f"class {name!r} already exists")
        self.classes[index] = ClassSpec(name, self.classes[index].color)

    def recolor_class(self, index: int, color: tuple[int, int, int]) -> None:
        self._check_class(index)
        self.classes[index] = ClassSpec(self.classes[index].name, tuple(int(v) for v in color[:3]))

    def remove_class(self, index: int) -> None:
        self._check_class(index)
        used = sorted(o for o, c in self.object_class.items() if c == index)
        if used:
            raise ValueError(f"class {self.classes[index].name!r} is used by {len(used)} object(s); "
                             f"re-class them first")
        in_history = any(index in (v for v in (*e.classes_before.values(), *e.classes_after.values()) if v is not None)
                         for e in self._undo + self._redo)
        del self.classes[index]
        self.object_class = {o: (c - 1 if c > index else c) for o, c in self.object_class.items()}
        if in_history:  # class indices in the history would point at the wrong class now
            self._undo.clear()
            self._redo.clear()
        else:
            for e in self._undo + self._redo:
                for d in (e.classes_before, e.classes_after):
                    for k, v in d.items():
                        if v is not None and v > index:
                            d[k] = v - 1

    def set_classes(self, classes: Sequence[ClassSpec]) -> None:
        """Replace the whole class list (a preset); refused while an object uses an index the new list lacks."""
        classes = list(classes)
        if not classes:
            raise ValueError("classes: keep at least one class")
        names = [c.name for c in classes]
        if len(set(names)) != len(names):
            raise ValueError(f"classes: names must be unique, got {names}")
        used = max(self.object_class.values(), default=-1)
        if used >= len(classes):
            raise ValueError(f"classes: class {self.classes[used].name!r} (index {used}) is still used by an "
                             f"object; re-class or delete it first")
        stale = any(v is not None and v >= len(classes)
                    for e in self._undo + self._redo for v in (*e.classes_before.values(), *e.classes_after.values()))
        if stale:  # the history would restore class indices that no longer exist
            self._undo.clear()
            self._redo.clear()
        self.classes = classes

    def color_dict(self, by_class: bool = True) -> dict:
        if by_class:
            return class_color_dict(self.object_class, self.classes)
        ids = set(self.object_class)
        ids.update(int(i) for i in np.unique(self.labels) if i)
        return instance_color_dict(sorted(ids))

    # ---- internals
    def _check_class(self, index: int) -> None:
        if not (0 <= int(index) < len(self.classes)):
            raise ValueError(f"class index {index} out of range (0..{len(self.classes) - 1})")

    def _push(self, e: Edit) -> None:
        self._undo.append(e)
        if len(self._undo) > self.max_undo:
            del self._undo[0]
        self._redo.clear()

    def _apply(self, e: Edit, forward: bool) -> None:
        if e.region is not None:
            sub = self.labels[e.region]
            vals = sub[e.mask]
            expect, write = (e.before, e.after) if forward else (e.after, e.before)
            keep = vals == expect  # pixels edited by hand since then are left alone
            vals[keep] = write[keep]
            sub[e.mask] = vals
        for oid, c in (e.classes_after if forward else e.classes_before).items():
            if c is None:
                self.object_class.pop(oid, None)
            else:
                self.object_class[oid] = c


# ---------------------------------------------------------------------------------------------------- predictor


# the widget's backends -> the predictor's precision (None: the torch backend)
BACKEND_PRECISION = {"torch": None, "onnxruntime": "float", "onnxruntime int8": "int8", "openvino bf16": "bf16"}
BACKENDS = tuple(BACKEND_PRECISION)


def default_backend(caps: dict | None = None, openvino: bool | None = None) -> str:
    """The annotator's start-up backend, from a quick capability check: "openvino bf16" where the CPU has bf16
    units (AMX / AVX512-BF16) and openvino is installed (faster than onnxruntime float at float's accuracy:
    docs/history.md), else "onnxruntime" (float; "onnxruntime int8" stays a choice: its graphs are made on first
    use)."""
    from napari_ultratinysam.inference.int8 import choose_precision

    return "openvino bf16" if choose_precision("auto", caps, openvino) == "bf16" else "onnxruntime"


@dataclass(frozen=True)
class PredictorSpec:
    """Which model the annotator should load: source "default" | "checkpoint" | "onnx", a path, a backend."""

    source: str = "default"
    path: str = ""
    backend: str = "torch"

    def describe(self) -> str:
        return {"default": "default weights", "checkpoint": f"checkpoint {self.path}",
                "onnx": f"ONNX {self.path}"}.get(self.source, self.source) + f" ({self.backend})"

    @property
    def loadable(self) -> bool:
        """Whether the spec names something to load (a checkpoint or ONNX source needs its path first)."""
        return self.source == "default" or bool(self.path.strip())


def model_status_text(in_use: PredictorSpec | None, chosen: PredictorSpec, given: bool = False) -> str:
    """The model picker's line: what is in use, and whether the choice differs from it (then it must be loaded).

    ``in_use``: the spec of the loaded predictor (None: nothing loaded yet); ``given``: a predictor handed over by
    the caller, whose spec is unknown."""
    if in_use is None:
        # a given predictor's backend is unknown: the picker's choice applies once loaded
        return "in use: a predictor given by the caller" if given else f"{chosen.describe()}: loaded on first use"
    if in_use == chosen:
        return f"in use: {in_use.describe()}"
    return f"in use: {in_use.describe()}; press Load model for {chosen.describe()}"


def load_predictor(spec: PredictorSpec, predictor_cls: Any = None):
    """Construct a predictor for ``spec`` through the Predictor factories; one clear error for bad input.

    Backends as the widget names them: "torch", "onnxruntime", "onnxruntime int8" or "openvino bf16" (the
    predictor calls the last three "onnx" with precision float / int8 / bf16; for the default weights or a
    checkpoint it exports an ONNX pair to a temporary folder first, and the int8 graphs once into a cache, see
    runtime_quant; bf16 runs the float pair on OpenVINO)."""
    if predictor_cls is None:
        from napari_ultratinysam.inference.predictor import Predictor as predictor_cls  # noqa: N813 (lazy: the torch import is slow)
    src, backend = spec.source, spec.backend
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    runtime = "torch" if backend == "torch" else "onnx"
    precision = BACKEND_PRECISION[backend]
    kw = {} if precision in (None, "float") else {"precision": precision}
    if src == "default":
        return predictor_cls.from_default(backend=runtime, **kw)
    if not spec.path:
        raise ValueError(f"model: choose a {'checkpoint file' if src == 'checkpoint' else 'ONNX folder'} first")
    if src == "checkpoint":
        return predictor_cls.from_checkpoint(spec.path, backend=runtime, **kw)
    if src == "onnx":
        if precision not in ("float", "bf16"):
            raise ValueError("model: an ONNX folder runs with the onnxruntime or openvino bf16 backend; choose one "
                             "under 'Backend'")
        return predictor_cls.from_onnx(spec.path, **kw)
    raise ValueError(f"model source: expected default, checkpoint or onnx, got {src!r}")


def load_device_predictor(path: str):
    """The IMX500 device-faithful predictor for an ``utsam export-imx500`` folder or its quantized ONNX: the
    quantized graph (onnxruntime + mct-quantizers) with its baked prompt, steered by moving the ROI as the Pi does
    (compression.device_predictor)."""
    if not path:
        raise ValueError("IMX500 preview: choose an export folder (utsam export-imx500 -o DIR) or its quantized .onnx")
    from napari_ultratinysam.compression.device_predictor import DevicePredictor

    return DevicePredictor.from_quantized_onnx(path)


class PredictorSession:
    """The predictor and the image it holds. Used ONLY on the worker thread (the predictor is not thread-safe);
    the GUI thread only sets the plain attributes ``zoom_refine``, ``flip_tta`` and ``spec``."""

    def __init__(self, predictor: Any = None, spec: PredictorSpec | None = None,
                 loader: Callable[[PredictorSpec], Any] = load_predictor):
        self.predictor = predictor
        self.spec = spec or PredictorSpec()
        self.loader = loader
        self.zoom_refine = False
        self.flip_tta = False
        self.loaded_spec: PredictorSpec | None = None  # the spec the session loaded (None: given, or none yet)
        self._key: Hashable | None = None

    def ensure_predictor(self):
        if self.predictor is None:
            spec = self.spec
            self.predictor = self.loader(spec)
            self.loaded_spec = spec
            self._key = None
        p = self.predictor
        if getattr(p, "flip_tta", None) is not None and p.flip_tta != self.flip_tta:
            p.flip_tta = self.flip_tta  # drops the predictor's embeddings: the current image is encoded again
            self._key = None
        return p

    def load(self, spec: PredictorSpec):
        self.predictor = self.loader(spec)
        self.spec = self.loaded_spec = spec
        self._key = None
        return self.predictor

    def ensure_image(self, key: Hashable, get_image: Callable[[], np.ndarray]) -> bool:
        """Make ``key`` the predictor's current image; True if an embedding had to be computed."""
        p = self.ensure_predictor()
        if self._key == key:
            return False
        computed = True
        has = getattr(p, "has_image", None)
        if has is not None and has(key):
            computed = False  # LRU-cached: set_image with the key is cheap
        p.set_image(np.asarray(get_image()), key=key)
        self._key = key
        return computed

    def prefetch(self, key: Hashable, get_image: Callable[[], np.ndarray]) -> bool:
        """Compute an embedding ahead (e.g. the next image of a project) without changing the current image."""
        p = self.ensure_predictor()
        has = getattr(p, "has_image", None)
        if has is not None and has(key):
            return False
        cur = self._key
        p.set_image(np.asarray(get_image()), key=key)
        self._key = key if cur is None else None  # the current image is set again (from the cache) on next use
        return True

    def predict(self, key: Hashable, get_image: Callable[[], np.ndarray], prompt: Prompt,
                mask_input: np.ndarray | None = None, multimask: bool | None = None,
                zoom_refine: bool | None = None, refine: bool | None = None):
        """``zoom_refine``: None = the session's setting; False = full view only (a first, fast stage).
        ``refine=False``: without full-resolution refinement (hover previews), where the predictor has it."""
        self.ensure_image(key, get_image)
        p = self.predictor
        if hasattr(p, "zoom_refine"):
            p.zoom_refine = bool(self.zoom_refine if zoom_refine is None else (zoom_refine and self.zoom_refine))
        kw = {"refine": False} if refine is False and getattr(p, "refiner", None) is not None else {}
        return p.predict(**prompt.predictor_kwargs(), mask_input=mask_input, multimask=multimask, **kw)

    def zoom_in(self, key: Hashable, get_image: Callable[[], np.ndarray], prompt: Prompt, first,
                mask_input: np.ndarray | None = None, refine: bool | None = None):
        """The zoom-refined version of ``first`` (the full-view result of :meth:`predict` for ``prompt`` on
        ``key``), or None when zooming does not apply. A predictor with ``zoom_in`` refines ``first`` without
        decoding the full view again; others predict again with the session's zoom setting."""
        p = self.ensure_predictor()
        if hasattr(p, "zoom_in") and first is not None:
            self.ensure_image(key, get_image)
            return p.zoom_in(first, refine=False) if refine is False and getattr(p, "refiner", None) else \
                p.zoom_in(first)
        r = self.predict(key, get_image, prompt, mask_input=mask_input, refine=refine)
        return r if getattr(r, "zoomed", False) else None


# ------------------------------------------------------------------------------------------------- dataset export


def dataset_export_formats(export_fn: Callable | None = None) -> tuple[str, ...]:
    """The formats the dataset export offers: CamVid-style always; COCO and YOLO once it takes ``format``."""
    import inspect

    if export_fn is None:
        from napari_ultratinysam.data.export import export_dataset as export_fn
    if "format" not in inspect.signature(export_fn).parameters:
        return ("camvid",)
    import sys

    mod = sys.modules.get(getattr(export_fn, "__module__", ""), None)
    for name in ("EXPORT_FORMATS", "FORMATS"):
        known = getattr(mod, name, None)
        if isinstance(known, (tuple, list)) and "camvid" in known:
            return tuple(known)
    return ("camvid", "coco", "yolo")


@dataclass(frozen=True)
class DatasetExportRequest:
    """The "Export dataset" form, checked: where, how the images split, which format, replace or add."""

    out: str
    ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    format: str = "camvid"
    overwrite: bool = False

    @classmethod
    def from_form(cls, out: str, ratios: str, fmt: str = "camvid", overwrite: bool = False,
                  formats: Sequence[str] = ("camvid",)) -> "DatasetExportRequest":
        from napari_ultratinysam.data.export import parse_ratios

        if not out.strip():
            raise ValueError("output folder: choose where to write the dataset")
        try:
            r = parse_ratios(ratios)
        except ValueError as exc:
            raise ValueError(f"split ratios (train,val,test): {exc}") from None
        if fmt not in formats:
            raise ValueError(f"format: expected one of {', '.join(formats)}, got {fmt!r}")
        return cls(out.strip(), r, fmt, bool(overwrite))

    def run(self, project_folder, export_fn: Callable | None = None):
        """Export the project saved in ``project_folder`` (opened afresh and read-only: the annotator's own Project
        holds the writer's lock and keeps autosaving on another thread); returns the export's summary."""
        import inspect

        from napari_ultratinysam.data.project import Project

        if export_fn is None:
            from napari_ultratinysam.data.export import export_dataset as export_fn
        params = inspect.signature(export_fn).parameters
        kw: dict[str, Any] = {"ratios": self.ratios, "overwrite": self.overwrite}
        if "format" in params:
            kw["format"] = self.format
        elif self.format != "camvid":
            raise ValueError(f"format: this version exports CamVid-style datasets only, not {self.format!r}")
        void = params.get("void_index")
        if void is not None and isinstance(void.default, int) and void.default != 255:
            kw["void_index"] = 255  # valid for any number of classes (the default 11 breaks after an added class)
        ro = {"read_only": True} if "read_only" in inspect.signature(Project.open).parameters else {}
        return export_fn(Project.open(project_folder, **ro), self.out, **kw)
