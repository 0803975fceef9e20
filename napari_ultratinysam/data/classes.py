"""The CamVid class table, once: the CamVid reader, new projects and the annotator's class preset all read it.

Plain tuples with no imports, so the Qt-free annotation state can use it without loading the readers (PIL, scipy).
"""
from __future__ import annotations

CAMVID_CLASSES: tuple[str, ...] = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
                                   "Car", "Pedestrian", "Bicyclist")
CAMVID_COLORS: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0), (192, 128, 128),
    (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
