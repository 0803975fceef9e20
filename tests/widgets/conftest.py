"""Fixtures for the annotator GUI tests: a deterministic fake predictor with the Predictor interface."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest


@dataclass
class FakePrediction:
    masks: np.ndarray
    scores: np.ndarray
    lowres: np.ndarray
    object_score: float


class FakePredictor:
    """Same interface as napari_ultratinysam.inference.predictor.Predictor, with obvious answers:

    - points: a disc of ``radius`` around the last positive point, minus discs of ``radius // 2`` around negative
      points; with multimask (one click, no box) 3 candidates of radius r, r/2, 2r scored 0.9, 0.8, 0.7 but returned
      in a shuffled order (the widget must sort best first);
    - box: the filled box (intersected with the disc if there are positive points).
    ``delays`` (seconds) are slept per predict call in order (the first call slow, for stale-request tests).
    """

    lowres_size = 32

    def __init__(self, radius: int = 10, delays=(), embed_delay: float = 0.0):
        self.radius = radius
        self.delays = list(delays)
        self.embed_delay = embed_delay
        self.zoom_refine = True
        self.calls: list[dict] = []
        self.set_image_calls: list = []
        self.threads: set[str] = set()
        self._cache: dict = {}
        self._image = None
        self._key = None
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def has_image(self, key) -> bool:
        return key in self._cache

    def set_image(self, image, key=None):
        self.threads.add(threading.current_thread().name)
        image = np.asarray(image)
        if key not in self._cache:
            time.sleep(self.embed_delay)
            self._cache[key] = image.shape[:2]
        self.set_image_calls.append(key)
        self._image, self._key = image, key

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=None):
        self.threads.add(threading.current_thread().name)
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            delay = self.delays.pop(0) if self.delays else 0.0
            self.calls.append(dict(points=None if points is None else np.array(points), labels=labels, box=box,
                                   mask_input=mask_input, multimask=multimask, key=self._key,
                                   zoom_refine=self.zoom_refine))
        try:
            time.sleep(delay)
            return self._predict(pts_in=points, labels=labels, box=box, multimask=multimask)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _predict(self, pts_in, labels, box, multimask):
        points = pts_in
        h, w = self._image.shape[:2]
        yy, xx = np.mgrid[:h, :w]
        pts = np.zeros((0, 2)) if points is None else np.asarray(points, float).reshape(-1, 2)
        lab = np.ones(len(pts), int) if labels is None else np.asarray(labels).reshape(-1)
        pos = pts[lab == 1]
        neg = pts[lab == 0]

        def disc(p, r):
            return (xx - p[0]) ** 2 + (yy - p[1]) ** 2 <= r * r

        if multimask is None:
            multimask = box is None and len(pts) == 1
        radii = [self.radius, self.radius // 2, self.radius * 2] if multimask else [self.radius]
        masks = []
        for r in radii:
            m = np.ones((h, w), bool) if box is not None else np.zeros((h, w), bool)
            if len(pos):
                d = disc(pos[-1], r)
                m = (m & d) if box is not None else d
            if box is not None:
                x0, y0, x1, y1 = box
                m &= (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
            for q in neg:
                m &= ~disc(q, max(1, self.radius // 2))
            masks.append(m)
        scores = np.array([0.9, 0.8, 0.7][: len(masks)], np.float32)
        order = [1, 0, 2][: len(masks)] if len(masks) == 3 else [0]  # not best first on purpose
        masks = np.stack(masks)[order]
        scores = scores[order]
        lowres = np.stack([np.full((self.lowres_size, self.lowres_size), s, np.float32) for s in scores])
        return FakePrediction(masks, scores, lowres, 1.0)


@pytest.fixture(name="FakePredictor")
def fake_predictor_cls():
    """The fake predictor class (tests/ is not a package, so tests get it through a fixture)."""
    return FakePredictor


@pytest.fixture
def fake_predictor():
    return FakePredictor()


def wait_preview(qtbot, widget, timeout=5000):
    """Wait until the preview layer shows the result of the newest request."""
    with qtbot.waitSignal(widget.preview_updated, timeout=timeout):
        pass


@pytest.fixture
def commit_at(qtbot):
    """commit_at(widget, row, col) -> the id of the object committed from a click there (waits for the preview)."""

    def commit(widget, row, col) -> int:
        with qtbot.waitSignal(widget.preview_updated, timeout=5000):
            widget.add_point(row, col)
        oid = widget.commit()
        assert oid is not None
        return oid

    return commit


@pytest.fixture
def annotator(make_napari_viewer, qtbot):
    """Factory: (viewer, widget) with an image, the fake predictor and the embedding ready."""
    from napari_ultratinysam.widgets.annotator import AnnotatorWidget

    made = []

    def make(image=None, predictor=None, show=False, name="img", **kw):
        viewer = make_napari_viewer(show=show)
        if image is None:
            image = np.zeros((64, 80), np.uint8)
            image[20:40, 30:50] = 200
        predictor = predictor or FakePredictor()
        widget = AnnotatorWidget(viewer, predictor=predictor, **kw)
        viewer.window.add_dock_widget(widget, name="UltraTinySAM", area="right")
        with qtbot.waitSignal(widget.embedding_ready, timeout=20000):
            viewer.add_image(image, name=name, rgb=image.ndim == 3 and image.shape[-1] in (3, 4))
        made.append(widget)
        return viewer, widget

    yield make
    for w in made:
        w.cleanup()


class OraclePredictor(FakePredictor):
    """Answers from reference instance masks (a sample's ``*_instances.png``): the object under the last positive
    click, or the object covering most of a box. Used for screenshots when no trained weights are installed."""

    def __init__(self, instances: np.ndarray):
        super().__init__()
        self.instances = np.asarray(instances)

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=None):
        self.calls.append(dict(points=points, labels=labels, box=box))
        inst = self.instances
        oid = 0
        if points is not None:
            pts = np.asarray(points, float).reshape(-1, 2)
            lab = np.ones(len(pts), int) if labels is None else np.asarray(labels).reshape(-1)
            pos = pts[lab == 1]
            if len(pos):
                x, y = np.round(pos[-1]).astype(int)
                oid = int(inst[y, x])
        if not oid and box is not None:
            x0, y0, x1, y1 = np.round(box).astype(int)
            ids, counts = np.unique(inst[y0:y1 + 1, x0:x1 + 1], return_counts=True)
            keep = ids > 0
            oid = int(ids[keep][np.argmax(counts[keep])]) if keep.any() else 0
        m = (inst == oid) if oid else np.zeros(inst.shape, bool)
        return FakePrediction(m[None], np.array([0.97], np.float32),
                              np.zeros((1, self.lowres_size, self.lowres_size), np.float32), 1.0)


@pytest.fixture(name="OraclePredictor")
def oracle_predictor_cls():
    return OraclePredictor
