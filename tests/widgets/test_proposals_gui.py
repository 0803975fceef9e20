"""Propose objects in the annotator (under Xvfb), with the real default model on the coins sample: proposals appear
in their own layer, Y accepts the one under the cursor as an object of the selected class, N rejects one, Accept
all commits the rest as one undo step, and clicks + C correct a proposal (which then leaves the proposals)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_ultratinysam.annotation import AnnotationModel, ClassSpec
from napari_ultratinysam.core.paths import sample_path


@pytest.fixture(scope="module")
def real_predictor():
    from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("the shipped default weights are not installed")
    import torch

    from napari_ultratinysam.inference.predictor import Predictor

    torch.set_num_threads(1)
    return Predictor.from_default(backend="torch")


def _coins():
    img = np.asarray(Image.open(sample_path("coins.png")))
    gt = np.asarray(Image.open(sample_path("coins_instances.png")))
    return img, gt


def _key(viewer, name):
    return next(fn for k, fn in viewer.keymap.items() if str(k) == name)


def _propose(qtbot, w):
    with qtbot.waitSignal(w.proposals_updated, timeout=180000, check_params_cb=lambda n: n > 0):
        w.propose_btn.click()


def _centre(gt, i):
    ys, xs = np.nonzero(gt == i)
    k = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    return float(ys[k]), float(xs[k])


def test_propose_accept_reject_accept_all(annotator, qtbot, real_predictor):
    from napari_ultratinysam.inference.segment_all import recall_at

    img, gt = _coins()
    viewer, w = annotator(image=img, predictor=real_predictor, name="coins")
    assert not w.accept_all_btn.isEnabled() and w.proposal_set is None
    assert "Y / N" in w.help_label.text() and "Shift+Y" in w.help_label.text()
    coin = w.add_class("coin")
    _propose(qtbot, w)
    ps, layer = w.proposal_set, viewer.layers["proposals"]
    assert layer is w.proposal_layer and np.array_equal(layer.data, ps.labels)
    found, total = recall_at(layer.data, [gt == i for i in range(1, int(gt.max()) + 1)])
    assert total == 24 and found >= 20, f"{found} of 24 coins proposed at IoU >= 0.5"
    assert w.accept_all_btn.isEnabled() and w.reject_all_btn.isEnabled()
    assert viewer.layers.selection.active is w.prompts  # clicks still make prompts
    assert not w.annotations.data.any()  # nothing committed by proposing

    # Y: the proposal under the cursor becomes an object of the selected class
    coins = [i for i in range(1, 25) if w.proposal_at(*_centre(gt, i))]
    assert len(coins) >= 20
    rc = _centre(gt, coins[0])
    pid = w.proposal_at(*rc)
    mask = ps.labels == pid
    viewer.cursor.position = rc
    _key(viewer, "Y")(viewer)
    assert w.model.object_class == {1: coin}
    assert np.array_equal(w.annotations.data == 1, mask)
    assert pid not in ps.ids and not (layer.data == pid).any()

    # N: rejected, nothing committed
    rc2 = _centre(gt, coins[1])
    pid2, left = w.proposal_at(*rc2), len(ps)
    viewer.cursor.position = rc2
    _key(viewer, "N")(viewer)
    assert pid2 not in ps.ids and len(ps) == left - 1 and not (layer.data == pid2).any()
    assert set(np.unique(w.annotations.data)) == {0, 1}
    viewer.cursor.position = (0.0, 0.0)  # a corner without a proposal: said so, nothing changes
    if not w.proposal_at(0, 0):
        assert _key(viewer, "N")(viewer) is False and "no proposal" in w.status_label.text()

    # Accept all: the rest, one undo step
    rest = len(ps)
    w.accept_all_btn.click()
    assert len(w.model.object_class) == 1 + rest and set(w.model.object_class.values()) == {coin}
    assert len(ps) == 0 and not layer.data.any() and not w.accept_all_btn.isEnabled()
    found, _ = recall_at(w.annotations.data.astype(np.uint16), [gt == i for i in range(1, 25)])
    assert found >= 19  # every coin proposed but the rejected one is now an object
    assert not (w.annotations.data[gt == coins[1]] != 0).mean() > 0.5  # the rejected coin stays unlabelled
    w.undo()
    assert set(np.unique(w.annotations.data)) == {0, 1} and list(w.model.object_class) == [1]
    w.redo()
    assert len(w.model.object_class) == 1 + rest


def test_propose_again_skips_annotated_and_clicks_correct_a_proposal(annotator, qtbot, real_predictor):
    img, gt = _coins()
    viewer, w = annotator(image=img, predictor=real_predictor, name="coins")
    w.hover_check.setChecked(False)
    _propose(qtbot, w)
    ps = w.proposal_set

    def iou(i):  # of coin i and the proposal at its centre (0: none there)
        pid = w.proposal_at(*_centre(gt, i))
        a, b = ps.labels == pid, gt == i
        return 0.0 if not pid else (a & b).sum() / (a | b).sum()

    i = max(range(1, 25), key=iou)  # the coin its proposal fits best: the box drawn around it holds that coin
    assert iou(i) >= 0.5
    pid = w.proposal_at(*_centre(gt, i))
    # correct it with clicks: a box around the coin, then C; the proposal it covers is done with
    ys, xs = np.nonzero(ps.labels == pid)
    with qtbot.waitSignal(w.preview_updated, timeout=30000):
        w.set_box(xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2)
    qtbot.waitUntil(lambda: not w.worker.is_busy("preview"), timeout=30000)
    n = len(ps)
    oid = w.commit()
    assert oid == 1 and pid not in ps.ids and len(ps) <= n - 1
    # proposing again leaves the annotated coin out
    _propose(qtbot, w)
    r, c = _centre(gt, i)
    again = w.proposal_at(r, c)
    assert again == 0 or (w.annotations.data[w.proposal_set.labels == again] == 0).mean() > 0.5
    assert "already annotated" in w.status_label.text()
    w.clear_proposals()  # Reject all
    assert w.proposal_set is None and not viewer.layers["proposals"].data.any()


def test_proposals_belong_to_their_slice(annotator, qtbot, real_predictor):
    img, _ = _coins()
    stack = np.stack([img, img[:, ::-1], img])
    viewer, w = annotator(image=stack, predictor=real_predictor, name="stack")
    assert w._plane == (1,)
    _propose(qtbot, w)
    layer = viewer.layers["proposals"]
    assert layer.data[1].any() and not layer.data[0].any() and not layer.data[2].any()
    with qtbot.waitSignal(w.proposals_updated, timeout=5000, check_params_cb=lambda n: n == 0):
        viewer.dims.set_current_step(0, 0)
    assert w.proposal_set is None and not layer.data.any()


def test_commit_many_is_one_undo_step():
    lab = np.zeros((10, 12), np.uint16)
    lab[0:2, 0:2] = 5
    model = AnnotationModel(lab, classes=[ClassSpec("object", (255, 0, 0)), ClassSpec("coin", (0, 255, 0))],
                            object_class={5: 0})
    a = np.zeros((10, 12), bool)
    a[1:4, 1:4] = True  # overlaps object 5: only unlabelled pixels are taken
    b = np.zeros((10, 12), bool)
    b[3:6, 3:6] = True  # overlaps a: a, first, keeps its pixels
    covered = np.zeros((10, 12), bool)
    covered[0, 0] = True  # nothing left to take: skipped
    ids, _ = model.commit_many([a, covered, b], 1)
    assert ids == [6, 7] and model.object_class == {5: 0, 6: 1, 7: 1}
    assert (lab[0:2, 0:2] == 5).all() and (lab == 6).sum() == 9 - 1 and (lab == 7).sum() == 9 - 1
    model.undo()
    assert model.object_class == {5: 0} and set(np.unique(lab)) == {0, 5} and (lab == 5).sum() == 4
    model.redo()
    assert (lab == 7).sum() == 8
    ids, _ = model.commit_many([b], 0, overwrite=True)
    assert ids == [8] and (lab == 8).sum() == 9
    with pytest.raises(ValueError, match="already belongs"):
        model.commit_many([covered], 0)
    with pytest.raises(ValueError, match="mask shape"):
        model.commit_many([np.ones((3, 3), bool)], 0)
    with pytest.raises(ValueError, match="class index 4"):
        model.commit_many([a], 4)
