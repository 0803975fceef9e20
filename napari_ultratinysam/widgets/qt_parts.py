"""Small Qt building blocks shared by the plugin's dock widgets."""
from __future__ import annotations

from typing import Callable

from qtpy.QtWidgets import QHBoxLayout, QLineEdit, QPushButton, QWidget


def with_browse_button(edit: QLineEdit, on_browse: Callable[[], None]) -> QWidget:
    """A row holding ``edit`` and a small "..." button that calls ``on_browse``."""
    w = QWidget()
    h = QHBoxLayout(w)
    h.setContentsMargins(0, 0, 0, 0)
    h.addWidget(edit)
    b = QPushButton("...")
    b.setMaximumWidth(32)
    b.clicked.connect(on_browse)
    h.addWidget(b)
    return w
