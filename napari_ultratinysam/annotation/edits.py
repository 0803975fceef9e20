"""The annotations of one image or stack and their undo/redo history, without Qt.

``AnnotationModel`` holds an instance-id map, an id -> class dict and an undo/redo stack of commits, deletions,
propagations and re-classing. Each edit stores only the pixels it changed and their previous values; undo/redo
restores a pixel only while it still holds the value the edit wrote, so brush/eraser edits made in napari in between
are left intact.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from napari_ultratinysam.annotation.candidates import mask_bbox, union_bbox
from napari_ultratinysam.annotation.classes import (
    CAMVID_CLASSES,
    ClassSpec,
    class_color_dict,
    instance_color_dict,
    random_class_color,
)


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
            bb = union_bbox(bb, mask_bbox(m))
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
