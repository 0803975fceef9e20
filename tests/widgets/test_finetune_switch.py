"""The Fine-tune panel's "use in the annotator" finds a docked annotator without importing its class."""
from __future__ import annotations

from napari_ultratinysam.widgets.finetune_panel import switch_annotator_to


def test_switch_loads_the_checkpoint_in_the_docked_annotator(annotator, qtbot):
    from qtpy.QtWidgets import QLabel

    viewer, w = annotator()
    viewer.window.add_dock_widget(QLabel("not an annotator"), name="other", area="left")
    loaded = []
    w.load_model = lambda: loaded.append((w.source_combo.currentData(), w.path_edit.text()))
    assert switch_annotator_to(viewer, "/runs/ft/best.safetensors")
    assert loaded == [("checkpoint", "/runs/ft/best.safetensors")]


def test_switch_without_an_annotator_finds_none(make_napari_viewer):
    from qtpy.QtWidgets import QLabel

    viewer = make_napari_viewer()
    viewer.window.add_dock_widget(QLabel("not an annotator"), name="other", area="left")
    assert not switch_annotator_to(viewer, "/runs/ft/best.safetensors")
