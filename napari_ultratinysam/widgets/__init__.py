"""napari widgets. Importing this package makes torch skip Triton (see napari_ultratinysam._gui_safety)."""
from napari_ultratinysam import _gui_safety  # noqa: F401
