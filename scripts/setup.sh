#!/usr/bin/env bash
# Set up everything on a fresh Debian/Ubuntu machine (Python 3.10-3.12): X libraries for napari's tests under
# Xvfb, a virtual environment in .venv with the package and every extra: training (torch), the IMX500 toolchain,
# the test tools, OpenVINO and napari's PyQt5 binding (a light annotate-only install is `pip install .[pyqt6]`: README);
# then .wheelhouse/, the base install's wheels, for the test that installs the built wheel offline.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = "0" ] || { command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"; }
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = "0" ] || [ -n "$SUDO" ]; }; then
  if ! command -v Xvfb >/dev/null 2>&1 || ! ldconfig -p | grep -q libxcb-icccm.so.4; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 \
      libgl1 libegl1 libxkbcommon-x11-0 libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-xfixes0 \
      libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 >/dev/null
  fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -U pip
.venv/bin/python -m pip install -q -e ".[train,imx500,dev,pyqt5,openvino]"
# A wheelhouse for tests/test_base_install.py: the wheels of the base install's dependencies and of napari's PyQt6
# binding (the README's `pip install 'napari-ultratinysam[pyqt6]'`), from which that test installs the built wheel
# into a new virtual environment without the network. Optional: on failure the test skips and set-up goes on.
t0=$SECONDS
rm -rf .wheelhouse.partial
if .venv/bin/python -m pip download -q --prefer-binary -d .wheelhouse.partial ".[pyqt6]" >/dev/null 2>.wheelhouse.log
then
  rm -rf .wheelhouse && mv .wheelhouse.partial .wheelhouse && rm -f .wheelhouse.log
  echo "wheelhouse: $(ls .wheelhouse | wc -l) wheels, $(du -sh .wheelhouse | cut -f1), $((SECONDS - t0)) s"
else
  rm -rf .wheelhouse.partial .wheelhouse  # none rather than a stale one: the base-install test skips
  echo "wheelhouse: pip download failed (the base-install test will skip): $(tail -n 3 .wheelhouse.log)" >&2
fi
echo "setup done: $(.venv/bin/python -c 'import torch, napari_ultratinysam as u; print("torch", torch.__version__, "utsam", u.__version__)')"
