"""Regenerate napari_ultratinysam/weights/onnx: the shipped weights' float ONNX graphs, which the base install
(no torch) runs. Run after changing the shipped weights or runtime.export_onnx (EXPORT_FORMAT); needs the [train]
extra. tests/test_base_install.py::test_shipped_onnx_graphs_are_current fails until then.

    .venv/bin/python scripts/write_shipped_onnx.py
"""
from __future__ import annotations

from napari_ultratinysam.inference.int8 import write_shipped_onnx

if __name__ == "__main__":
    out = write_shipped_onnx()
    print("wrote " + ", ".join(f"{f.name} ({f.stat().st_size / 2**20:.1f} MiB)" for f in sorted(out.iterdir())))
