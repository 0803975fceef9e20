"""Keep torch from importing Triton inside the napari process.

Under software OpenGL (Mesa llvmpipe, e.g. Xvfb or a remote desktop), napari's canvas loads Mesa's LLVM; importing
Triton afterwards (torch._dynamo does it when timm/torchvision import it) loads a second LLVM and the process
segfaults (seen with torch 2.14 + napari 0.9 + Mesa). Triton only serves GPU kernel compilation, which this plugin
never uses, so inside napari we make ``import triton`` fail cleanly: torch then reports "no Triton" and carries on.
"""
from __future__ import annotations

import sys


def block_triton() -> None:
    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # `import triton` raises ImportError from now on in this process


block_triton()
