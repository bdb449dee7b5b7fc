"""Matplotlib figures as `image/png`, whatever backend the user picked.

TCI's own reference admits that `plt.show()` after `matplotlib.use('Agg')` may return no
image. Here `plt.show()` publishes and closes every open figure, and at the end of each cell
any figure still open is published and closed too, so nothing is lost and nothing repeats.
Matplotlib is never imported by this module: a cell that does not use it pays nothing.
"""

from __future__ import annotations

import io
import sys
from typing import Any

from .shell import Emit, jsonable_bundle

# The worker's collector, for `mpl_backend.show()`.
active: FigureCollector | None = None


def _figure_png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.canvas.print_figure(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _figure_bundle(figure: Any) -> dict[str, Any]:
    return jsonable_bundle({"image/png": _figure_png(figure), "text/plain": repr(figure)})


class FigureCollector:
    def __init__(self, emit: Emit) -> None:
        global active
        self._emit = emit
        self._patched_pyplot: Any = None
        active = self  # found by mpl_backend.show without importing anything heavy

    def install_formatter(self, shell: Any) -> None:
        """A Figure as a cell's last expression renders as PNG, without importing matplotlib."""
        png = shell.display_formatter.formatters["image/png"]
        png.for_type_by_name("matplotlib.figure", "Figure", _figure_png)

    def _patch_show(self) -> None:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None or self._patched_pyplot is pyplot:
            return
        collector = self

        def show(*args: Any, **kwargs: Any) -> None:
            collector.publish_open_figures()

        pyplot.show = show
        self._patched_pyplot = pyplot

    def before_cell(self) -> None:
        self._patch_show()

    def publish_open_figures(self) -> None:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        self._patch_show()
        for number in pyplot.get_fignums():
            figure = pyplot.figure(number)
            try:
                self._emit({"type": "display_data", "data": _figure_bundle(figure)})
            finally:
                pyplot.close(figure)
