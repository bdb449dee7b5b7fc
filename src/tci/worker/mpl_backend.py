"""A matplotlib backend (`MPLBACKEND=module://tci_worker.mpl_backend`): Agg plus a `show()`
that publishes every open figure as `image/png` right where the cell calls it."""

from __future__ import annotations

from typing import Any

from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

from . import figures

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase



def show(*args: Any, **kwargs: Any) -> None:
    if figures.active is not None:
        figures.active.publish_open_figures()
