"""The annotator and the project lock: a project open elsewhere can be opened read-only (asked, nothing saved),
and the annotator releases a project's lock when it moves to another project or closes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_ultratinysam.data.project import Project, ProjectLockedError


def _images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(2):
        img = np.full((64, 80, 3), 30 + 40 * k, np.uint8)
        img[16:32, 20:40] = 220
        Image.fromarray(img).save(folder / f"im{k}.png")
    return folder


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_a_project_open_elsewhere_opens_read_only_when_the_user_agrees(annotator, commit_at, qtbot, tmp_path):
    _, w = annotator()
    folder = tmp_path / "proj"
    Project.create(folder, _images(tmp_path / "imgs")).close()
    other = Project.open(folder)  # another window holds it
    try:
        asked = []
        w.ask_open_read_only = lambda exc: asked.append(str(exc)) or False
        assert not w.open_project(folder)
        assert len(asked) == 1 and "another window" in asked[0] and w.project is None
        assert "another window" in w.project_label.text()

        w.ask_open_read_only = lambda exc: True
        before = _files(folder)
        with qtbot.waitSignal(w.embedding_ready, timeout=5000):
            assert w.open_project(folder)
        assert w.project.read_only and "read-only" in w.project_label.text()
        commit_at(w, 24, 30)  # annotating works, nothing is written
        w.flush_autosave()
        qtbot.wait(200)
        assert _files(folder) == before
        assert "autosave failed" not in w.project_label.text()
    finally:
        other.close()


def test_moving_to_another_project_or_closing_releases_the_lock(annotator, commit_at, qtbot, tmp_path):
    _, w = annotator()
    a, b = tmp_path / "a", tmp_path / "b"
    imgs = _images(tmp_path / "imgs")
    with qtbot.waitSignal(w.embedding_ready, timeout=5000):
        assert w.new_project(a, imgs)
    commit_at(w, 24, 30)
    w.flush_autosave()
    with pytest.raises(ProjectLockedError):
        Project.open(a)  # held by the annotator
    with qtbot.waitSignal(w.embedding_ready, timeout=5000):
        assert w.new_project(b, imgs)
    with Project.open(a) as p:  # released when the annotator moved to b
        assert len(p.get_annotation(0)[1]) == 1  # the commit made on a was saved before
    with pytest.raises(ProjectLockedError):
        Project.open(b)
    w.cleanup()
    Project.open(b).close()  # released when the annotator closed
