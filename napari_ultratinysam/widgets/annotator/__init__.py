"""The UltraTinySAM annotator dock widget (``Plugins > UltraTinySAM > Annotator``).

Thin by design: it turns mouse/keyboard/widget events into calls on the Qt-free helpers in
``napari_ultratinysam.annotation`` and on the predictor, which runs only on the ``LatestRequestWorker`` thread. Layers
it manages (created once per chosen image, then updated in place): ``prompts`` (Points), ``box`` (Shapes),
``preview`` (Labels), ``annotations`` (Labels), and ``proposals`` (Labels) while "Propose objects" proposals are open.

One class, ``AnnotatorWidget`` (``widget``), assembled from one mixin per part of the form: ``model_picker``,
``device_preview`` (IMX500), ``layers`` (image, helper layers, planes, embeddings), ``input`` (mouse and keys),
``preview`` (prompt -> mask), ``objects`` (commit and edits), ``proposals``, ``classes_box`` and ``project_nav``.
"""
from napari_ultratinysam.widgets.annotator.widget import AnnotatorWidget

__all__ = ["AnnotatorWidget"]
