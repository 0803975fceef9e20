"""The Classes box: the class list (names, colours, presets) and which class new objects get."""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
)

from napari_ultratinysam.annotation import CLASS_PRESETS, AnnotationModel, preset_classes


def _swatch(rgb) -> QIcon:
    pm = QPixmap(14, 14)
    pm.fill(QColor(*[int(c) for c in rgb[:3]]))
    return QIcon(pm)


class ClassesMixin:
    """Part of AnnotatorWidget: the class list; edits go to the annotation model (and the project, if open)."""

    def _build_classes_box(self) -> QGroupBox:
        g = QGroupBox("Classes")
        v = QVBoxLayout(g)
        self.class_list = QListWidget()
        self.class_list.setMaximumHeight(170)
        self.class_list.itemChanged.connect(self._on_class_item_changed)
        v.addWidget(self.class_list)
        row = QHBoxLayout()
        self.add_class_btn = QPushButton("Add")
        self.add_class_btn.clicked.connect(lambda: self.add_class())
        self.remove_class_btn = QPushButton("Remove")
        self.remove_class_btn.clicked.connect(lambda: self.remove_class(self.current_class()))
        self.color_class_btn = QPushButton("Colour...")
        self.color_class_btn.clicked.connect(self._pick_class_color)
        for b in (self.add_class_btn, self.remove_class_btn, self.color_class_btn):
            row.addWidget(b)
        v.addLayout(row)
        row = QHBoxLayout()
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(CLASS_PRESETS))
        self.preset_combo.setToolTip("replace the class list by a preset (refused while an object uses a class "
                                     "the preset lacks)")
        self.preset_btn = QPushButton("Use preset")
        self.preset_btn.clicked.connect(lambda: self.apply_class_preset(self.preset_combo.currentText()))
        row.addWidget(QLabel("Preset"))
        row.addWidget(self.preset_combo, 1)
        row.addWidget(self.preset_btn)
        v.addLayout(row)
        self.by_class_check = QCheckBox("show annotations in class colours (off: instance colours)")
        self.by_class_check.setChecked(True)
        self.by_class_check.toggled.connect(lambda _: self._update_annotation_colors())
        v.addWidget(self.by_class_check)
        return g

    # ============================================================================================ classes
    def current_class(self) -> int:
        return max(0, self.class_list.currentRow())

    @property
    def classes(self):
        return self.model.classes if self.model is not None else self._classes

    def _rebuild_class_list(self):
        row = self.class_list.currentRow()
        self.class_list.blockSignals(True)
        self.class_list.clear()
        for c in self.classes:
            it = QListWidgetItem(_swatch(c.color), c.name)
            it.setFlags(it.flags() | Qt.ItemIsEditable)
            self.class_list.addItem(it)
        self.class_list.setCurrentRow(min(max(row, 0), len(self.classes) - 1))
        self.class_list.blockSignals(False)

    def _classes_target(self) -> AnnotationModel:
        """Class edits go to the model; before an image is chosen, to a detached model over a dummy array."""
        if self.model is not None:
            return self.model
        return AnnotationModel(np.zeros((1, 1), np.uint8), self._classes)

    def add_class(self, name: str | None = None, color=None) -> int | None:
        target = self._classes_target()
        name = name or f"class {len(target.classes) + 1}"
        try:
            idx = target.add_class(name, color)
        except ValueError as exc:
            self.status_label.setText(str(exc))
            return None
        self._classes = target.classes
        self._rebuild_class_list()
        self.class_list.setCurrentRow(idx)
        self._sync_project_classes()
        return idx

    def remove_class(self, index: int) -> bool:
        target = self._classes_target()
        try:
            target.remove_class(index)
        except ValueError as exc:
            self.status_label.setText(str(exc))
            return False
        self._classes = target.classes
        self._rebuild_class_list()
        self._update_annotation_colors()
        self._update_objects_label()
        self._sync_project_classes()
        return True

    def rename_class(self, index: int, name: str) -> bool:
        target = self._classes_target()
        try:
            target.rename_class(index, name)
        except ValueError as exc:
            self.status_label.setText(str(exc))
            self._rebuild_class_list()
            return False
        self._classes = target.classes
        self._rebuild_class_list()
        self._update_objects_label()
        self._sync_project_classes()
        return True

    def recolor_class(self, index: int, rgb) -> None:
        target = self._classes_target()
        target.recolor_class(index, rgb)
        self._classes = target.classes
        self._rebuild_class_list()
        self._update_annotation_colors()
        self._sync_project_classes()

    def apply_class_preset(self, name: str) -> bool:
        """Replace the class list by a preset (``CLASS_PRESETS``: the neutral "object", CamVid's 11 classes);
        refused, with one line, while an object of this image or of the project uses a class the preset lacks."""
        try:
            classes = preset_classes(name)
        except ValueError as exc:
            self.status_label.setText(str(exc))
            return False
        target = self._classes_target()
        old = list(target.classes)
        try:
            target.set_classes(classes)
            if self.project is not None:
                self.project.set_classes([c.name for c in classes], [c.color for c in classes])
        except ValueError as exc:
            target.classes = old
            self.status_label.setText(str(exc))
            return False
        self._classes = list(target.classes)
        self._rebuild_class_list()
        self.class_list.setCurrentRow(0)
        self._update_annotation_colors()
        self._update_objects_label()
        self.status_label.setText(f"classes: {name}")
        return True

    def _on_class_item_changed(self, item: QListWidgetItem):
        self.rename_class(self.class_list.row(item), item.text())

    def _pick_class_color(self):
        i = self.current_class()
        col = QColorDialog.getColor(QColor(*self.classes[i].color), self, f"Colour of {self.classes[i].name}")
        if col.isValid():
            self.recolor_class(i, (col.red(), col.green(), col.blue()))
