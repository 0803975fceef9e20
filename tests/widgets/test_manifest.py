"""The npe2 manifest: widget, sample data and reader are reachable through napari itself."""
import numpy as np


def test_manifest_valid():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-ultratinysam")
    assert pm.display_name == "UltraTinySAM"
    assert [w.display_name for w in pm.contributions.widgets] == ["Annotator", "Fine-tune", "Export to IMX500"]
    assert {s.key for s in pm.contributions.sample_data} == {"coins", "shapes", "coffee", "chelsea"}
    assert pm.contributions.readers[0].command == "napari-ultratinysam.get_reader"


def test_samples_open_with_masks(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-ultratinysam", "coins")
    assert [l.name for l in viewer.layers] == ["coins", "coins instances"]
    assert viewer.layers["coins"].data.shape == (303, 384)
    assert int(viewer.layers["coins instances"].data.max()) == 24
    viewer.open_sample("napari-ultratinysam", "chelsea")
    assert viewer.layers["chelsea"].rgb and viewer.layers["chelsea"].data.shape == (300, 451, 3)


def test_widget_from_plugins_menu(make_napari_viewer, qtbot, FakePredictor):
    from napari_ultratinysam.widgets.annotator import AnnotatorWidget

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-ultratinysam", "Annotator")
    try:
        assert isinstance(widget, AnnotatorWidget) and widget.viewer is viewer
        assert widget.layer_combo.count() == 0
        widget.session.predictor = FakePredictor()  # the plugin path builds the widget; give it the fake model
        with qtbot.waitSignal(widget.embedding_ready, timeout=5000):
            viewer.add_image(np.zeros((40, 40), np.uint8), name="a")
        assert widget.layer_combo.itemText(0) == "a"
        with qtbot.waitSignal(widget.preview_updated, timeout=5000):
            widget.handle_click((20, 20))
        assert widget.preview.data[20, 20] == 1 and widget.commit() == 1
        viewer.layers.remove(widget.preview)  # identity checks work on the layers napari hands back
        assert widget.preview is None
    finally:
        widget.cleanup()


def test_finetune_and_export_panels_open_from_the_plugin_menu(make_napari_viewer):
    from napari_ultratinysam.widgets.export_panel import ExportPanel
    from napari_ultratinysam.widgets.finetune_panel import FinetunePanel

    viewer = make_napari_viewer()
    _d1, ft = viewer.window.add_plugin_dock_widget("napari-ultratinysam", "Fine-tune")
    _d2, ex = viewer.window.add_plugin_dock_widget("napari-ultratinysam", "Export to IMX500")
    assert isinstance(ft, FinetunePanel) and isinstance(ex, ExportPanel)
    ft.dataset_edit.setText("/nonexistent/dataset")
    assert ft.start() is False and "not a CamVid-style export" in ft.status.text()
