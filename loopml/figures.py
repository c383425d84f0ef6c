"""Figures rendered to PNG once: the run's ``plots/`` artifacts and the model card embed the
same bytes (rendering a figure costs tens of milliseconds; a training run has a dozen)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 80

_rendered: WeakKeyDictionary[Figure, bytes] = WeakKeyDictionary()


def png_bytes(figure: Figure) -> bytes:
    """``figure`` as PNG (``DPI``), rendered the first time it is asked for.

    Figures are finished before they are shown: one changed after its first rendering keeps
    its first PNG. Each is laid out by itself (constrained or tight layout), so it is drawn
    once: ``bbox_inches="tight"`` would draw it twice (~30% of the time) for the same picture.
    """
    rendered = _rendered.get(figure)
    if rendered is None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
        rendered = _rendered[figure] = buffer.getvalue()
    return rendered
