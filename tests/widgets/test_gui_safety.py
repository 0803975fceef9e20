"""Regression: the real model (timm -> torchvision -> torch._dynamo -> triton) loaded inside a napari process that
already renders with Mesa's LLVM used to segfault. Run in a fresh interpreter so earlier imports cannot hide it."""
import os
import subprocess
import sys

SCRIPT = """
import numpy as np, napari
v = napari.Viewer(show=True)
v.add_image(np.zeros((32, 32)))
import napari_ultratinysam.widgets          # what napari imports when the plugin's widget opens
from napari_ultratinysam.model.build import build_model
m = build_model("ultratinysam_effnet")     # imports timm and torchvision
print("survived", type(m).__name__)
v.close()
"""


def test_real_model_loads_inside_a_rendering_napari_process():
    env = dict(os.environ)
    env.pop("QT_QPA_PLATFORM", None)
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "survived UltraTinySAM" in r.stdout
