"""The annotator's proposals state (Qt-free)."""
import numpy as np
import pytest

from napari_ultratinysam.annotation import AnnotationModel, ClassSpec
from napari_ultratinysam.annotation.proposals import ProposalSet


def _labels():
    lab = np.zeros((20, 30), np.uint16)
    lab[2:8, 2:8] = 1
    lab[10:18, 5:15] = 2
    lab[1:5, 20:28] = 3
    return lab


def test_select_accept_reject_and_accept_all():
    ps = ProposalSet(_labels(), scores=[0.5, 0.9, 0.7])
    assert ps.ids == [1, 2, 3] and len(ps) == 3
    assert ps.select_at(12, 6) == 2 and ps.selected == 2
    m = ps.accept()
    assert m.sum() == 80 and ps.ids == [1, 3] and ps.selected is None
    assert ps.select_at(0, 0) == 0 and ps.selected is None
    with pytest.raises(ValueError, match="no proposal selected"):
        ps.reject()
    ps.reject(1)
    with pytest.raises(ValueError, match="proposal 1: not open"):
        ps.accept(1)
    rest = ps.accept_all()
    assert [int(r.sum()) for r in rest] == [32] and len(ps) == 0


def test_accept_all_best_first_and_commits_to_the_model():
    ps = ProposalSet(_labels(), scores=[0.5, 0.9, 0.7])
    masks = ps.accept_all()
    assert [int(m.sum()) for m in masks] == [80, 32, 36]  # by predicted IoU
    model = AnnotationModel(np.zeros((20, 30), np.uint32), classes=[ClassSpec("object", (255, 0, 0))])
    for m in masks:
        model.commit(m, 0)
    assert len(np.unique(model.labels)) == 4


def test_bad_maps_are_refused():
    with pytest.raises(ValueError, match="instance map"):
        ProposalSet(np.zeros((2, 3, 4), np.uint16))
    with pytest.raises(ValueError, match="1 scores for 3"):
        ProposalSet(_labels(), scores=[0.1])
