"""The Project box: open, create or import a project, move between its images (autosaved off the GUI thread), and
export it as a dataset."""
from __future__ import annotations

import time

import numpy as np
from qtpy.QtWidgets import QFileDialog, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from napari_ultratinysam.annotation import DEFAULT_CLASSES, AnnotationModel, ClassSpec


class ProjectMixin:
    """Part of AnnotatorWidget: the open project, its navigation, autosave and dataset export."""

    def _build_project_box(self) -> QGroupBox:
        g = QGroupBox("Project")
        v = QVBoxLayout(g)
        row = QHBoxLayout()
        self.open_project_btn = QPushButton("Open...")
        self.open_project_btn.setToolTip("open an annotation project folder")
        self.open_project_btn.clicked.connect(self._open_project_dialog)
        self.new_project_btn = QPushButton("New from images...")
        self.new_project_btn.setToolTip("choose a folder of images, then where to keep the project")
        self.new_project_btn.clicked.connect(self._new_project_dialog)
        self.prev_btn = QPushButton("< Prev")
        self.prev_btn.clicked.connect(lambda: self.go_to_image(self.project_index - 1))
        self.next_btn = QPushButton("Next >")
        self.next_btn.clicked.connect(lambda: self.go_to_image(self.project_index + 1))
        for b in (self.open_project_btn, self.new_project_btn, self.prev_btn, self.next_btn):
            row.addWidget(b)
        self.prev_btn.setEnabled(False)
        self.next_btn.setEnabled(False)
        v.addLayout(row)
        self.export_dataset_btn = QPushButton("Export dataset...")
        self.export_dataset_btn.setToolTip("the project's annotations -> a training dataset (CamVid-style for "
                                           "Fine-tune; COCO / YOLO where offered), split into train / val / test")
        self.export_dataset_btn.clicked.connect(lambda: self.open_export_dialog())
        self.export_dataset_btn.setEnabled(False)
        v.addWidget(self.export_dataset_btn)
        self.import_labels_btn = QPushButton("Import labels...")
        self.import_labels_btn.setToolTip("a new project from existing labels to correct them: CamVid-style, COCO, "
                                          "YOLO, images/ + masks/, or a folder of images and one of masks")
        self.import_labels_btn.clicked.connect(self._import_labels_dialog)
        v.addWidget(self.import_labels_btn)
        self.project_label = QLabel("no project: annotations live in the 'annotations' layer only")
        self.project_label.setWordWrap(True)
        v.addWidget(self.project_label)
        return g

    # ============================================================================================ project
    def _open_project_dialog(self):
        folder = QFileDialog.getExistingDirectory(self, "Annotation project folder")
        if folder:
            self.open_project(folder)

    def _new_project_dialog(self):
        images = QFileDialog.getExistingDirectory(self, "Folder of images to annotate")
        if not images:
            return
        folder = QFileDialog.getExistingDirectory(self, "Where to keep the project (an empty folder)")
        if folder:
            self.new_project(folder, images)

    def open_project(self, folder) -> bool:
        """Open a project folder; one that another window or process has open can be opened read-only (asked)."""
        from napari_ultratinysam.data.project import Project, ProjectLockedError

        try:
            try:
                project = Project.open(folder)
            except ProjectLockedError as exc:
                if not self.ask_open_read_only(exc):
                    self.project_label.setText(f"<span style='color:#e55'>{exc}</span>")
                    return False
                project = Project.open(folder, read_only=True)
        except (OSError, ValueError) as exc:
            self.project_label.setText(f"<span style='color:#e55'>{exc}</span>")
            return False
        self.set_project(project)
        return True

    def ask_open_read_only(self, exc) -> bool:
        """The project is open elsewhere: open it read-only here? (a dialog; tests replace this method)"""
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self, "Project in use", f"{exc}\n\nOpen it read-only? Nothing you do here "
                                      "will be saved.", QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        return answer == QMessageBox.Yes

    def new_project(self, folder, images) -> bool:
        from napari_ultratinysam.data.project import Project

        try:
            project = Project.create(folder, images, classes=[c.name for c in self.classes],
                                     colors=[c.color for c in self.classes])
        except (OSError, ValueError) as exc:
            self.project_label.setText(f"<span style='color:#e55'>{exc}</span>")
            return False
        self.set_project(project)
        return True

    def _import_labels_dialog(self):
        from napari_ultratinysam.data.readers import detect_format

        src = QFileDialog.getExistingDirectory(self, "Labelled images (CamVid, COCO, YOLO, images/ + masks/)")
        if not src:
            return
        masks = None
        try:
            detect_format(src)
        except (OSError, ValueError):  # no dataset layout: a folder of images whose masks are elsewhere
            masks = QFileDialog.getExistingDirectory(self, "Folder of masks for these images (same file names)")
            if not masks:
                return
        folder = QFileDialog.getExistingDirectory(self, "Where to keep the project (a new or empty folder)")
        if folder:
            self.import_labels(src, folder, masks=masks)

    def import_labels(self, source, folder, masks=None):
        """Project > Import labels: a new project from existing labels, built off the GUI thread, then opened here
        with the labels as committed objects. Returns the napari worker (None while an import runs)."""
        from napari.qt.threading import create_worker

        from napari_ultratinysam.data.importer import import_labels

        if not self.import_labels_btn.isEnabled():
            return None

        def done(summary):
            self.import_labels_btn.setEnabled(True)
            if self._closed:
                summary.project.close()
                return
            self.set_project(summary.project)
            self._notify(f"UltraTinySAM: {str(summary).splitlines()[0]}", warning=False)

        def failed(exc):
            self.import_labels_btn.setEnabled(True)
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.project_label.setText(f"<span style='color:#e55'>import failed: {msg}</span>")

        self.import_labels_btn.setEnabled(False)
        self.project_label.setText(f"importing labels from {source} ...")
        worker = create_worker(import_labels, source, folder, masks=masks,
                               _progress={"total": 0, "desc": "Importing labels"}, _ignore_errors=True)
        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.start()
        return worker

    def set_project(self, project) -> None:
        """Annotate a Project: its classes, its current image; every change is saved (off the GUI thread). The
        project shown before is closed (its lock released for other windows)."""
        self.flush_autosave()
        old, self.project = self.project, project
        if old is not None and old is not project:
            old.close()
        self._classes = [ClassSpec(n, tuple(int(v) for v in c)) for n, c in zip(project.classes, project.colors)]
        if not self._classes:  # a project without classes starts with the neutral one
            self._classes = list(DEFAULT_CLASSES)
            self._sync_project_classes()
        if self.model is not None:
            self.model.classes = list(self._classes)
        self._rebuild_class_list()
        self.export_dataset_btn.setEnabled(True)
        self.go_to_image(project.cursor)

    def go_to_image(self, i: int) -> None:
        p = self.project
        if p is None or not len(p):
            return
        i = int(np.clip(i, 0, len(p) - 1))
        self.flush_autosave()
        try:
            img = p.image(i)
            id_map, classes, _order = p.get_annotation(i)
        except (OSError, ValueError) as exc:
            self.project_label.setText(f"<span style='color:#e55'>{exc}</span>")
            return
        p.go_to(i)
        self.project_index = i
        name = "project image"
        layer = next((l for l in self._image_layers() if l.name == name), None)
        if layer is None:
            layer = self.viewer.add_image(img, name=name, rgb=True)
        else:
            layer.data = img
            layer.reset_contrast_limits()
        self.set_image_layer(layer, key_base=("project", str(p.folder), i))
        self._project_annotations = self.annotations
        self.annotations.data[...] = id_map
        self.model = AnnotationModel(self.annotations.data, self._classes,
                                     {int(k): int(v) for k, v in classes.items() if int(v) >= 0})
        self.selected_id = 0
        self.annotations.refresh()
        self._update_annotation_colors()
        self._update_objects_label()
        self._update_project_label()
        self.viewer.reset_view()
        if i + 1 < len(p):  # the next image's embedding, computed ahead (lenient: never delays a click)
            key, session, nxt = (("project", str(p.folder), i + 1), (), ()), self.session, i + 1
            self.worker.submit("prefetch", lambda: session.prefetch(key, lambda: p.image(nxt)), strict=False)

    def _update_project_label(self):
        p = self.project
        if p is None:
            return
        note = " - read-only: changes are not saved" if p.read_only else ""
        self.project_label.setText(f"{p.folder.name}: image {self.project_index + 1}/{len(p)} "
                                   f"({p.names[self.project_index]}) - {p.progress_text()}{note}")
        self.prev_btn.setEnabled(self.project_index > 0)
        self.next_btn.setEnabled(self.project_index < len(p) - 1)

    def _autosave(self):
        p, i = self.project, self.project_index
        if p is None or p.read_only or self.model is None or i < 0 or self.annotations is None:
            return
        if self.annotations is not self._project_annotations or not self._in_project():
            return  # another image layer is being annotated: not the project's image i
        snapshot = np.array(self.annotations.data, copy=True)
        object_class = dict(self.model.object_class)

        def save():
            ids = np.unique(snapshot)
            p.set_annotation(i, snapshot, {int(k): object_class.get(int(k), -1) for k in ids if k})

        self.saver.submit("save", save, on_done=lambda _: self._update_project_label(),
                          on_error=lambda exc: self.project_label.setText(
                              f"<span style='color:#e55'>autosave failed: {exc}</span>"))

    def flush_autosave(self, timeout: float = 10.0) -> None:
        """Wait (processing events) until pending project writes are done: before switching images or closing."""
        from qtpy.QtWidgets import QApplication

        t_end = time.perf_counter() + timeout
        while self.saver.is_busy() and time.perf_counter() < t_end:
            QApplication.processEvents()
            time.sleep(0.002)

    # ====================================================================================== dataset export
    def default_export_folder(self) -> str:
        p = self.project
        return "" if p is None else str(p.folder.parent / f"{p.folder.name}_dataset")

    def open_export_dialog(self, export_fn=None):
        """Project > Export dataset: the dialog (non-modal) for the open project; None without a project."""
        if self.project is None:
            self.project_label.setText("open or create a project first: the export reads its saved annotations")
            return None
        from napari_ultratinysam.widgets.export_panel import DatasetExportDialog

        folder = self.project.folder
        d = self.export_dialog
        if d is None or d.project_folder != folder or (export_fn is not None and d._export_fn is not export_fn):
            if d is not None:
                d.close()
            d = DatasetExportDialog(folder, parent=self, default_out=self.default_export_folder(),
                                    export_fn=export_fn, before_export=self.flush_autosave)
            d.exported.connect(self._on_dataset_exported)
            self.export_dialog = d
        d.show()
        d.raise_()
        return d

    def _on_dataset_exported(self, out: str, summary) -> None:
        from pathlib import Path

        from napari_ultratinysam.widgets.finetune_panel import set_finetune_dataset

        trainable = (Path(out) / "dataset.json").is_file() or (Path(out) / "train.txt").is_file()
        if trainable:  # what Fine-tune reads (COCO / YOLO exports are for other tools)
            self.last_dataset_export = out
        filled = trainable and set_finetune_dataset(self.viewer, out)
        note = " (the Fine-tune panel's dataset is set to it)" if filled else ""
        self.project_label.setText(f"dataset exported to {out}{note}")
        self._notify(f"UltraTinySAM: dataset exported to {out}{note}", warning=False)

    def _sync_project_classes(self):
        if self.project is None:
            return
        try:
            self.project.set_classes([c.name for c in self.classes], [c.color for c in self.classes])
        except ValueError as exc:
            self.status_label.setText(str(exc))
