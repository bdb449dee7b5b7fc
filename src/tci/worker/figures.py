"""Matplotlib figures as `image/png`, whatever backend the user picked.

TCI's own reference admits that `plt.show()` after `matplotlib.use('Agg')` may return no
image. Here `plt.show()` publishes and closes every open figure, and at the end of each cell
any figure still open is published and closed too, so nothing is lost and nothing repeats.
Matplotlib is never imported by this module: a cell that does not use it pays nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
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


class _PyplotImportHook(importlib.abc.MetaPathFinder):
    """Patches `pyplot.show` the moment pyplot is imported, so that a cell which picks a
    backend (`matplotlib.use('Agg')`), imports pyplot and shows, gets its image in place."""

    def __init__(self, on_import: Any) -> None:
        self._on_import = on_import

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "matplotlib.pyplot":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader, on_import = spec.loader, self._on_import
        exec_module = loader.exec_module

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            on_import(module)

        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


class FigureCollector:
    def __init__(self, emit: Emit) -> None:
        global active
        self._emit = emit
        self._patched_pyplot: Any = None
        self._displayed: set[int] = set()  # figures this cell already returned
        active = self  # found by mpl_backend.show without importing anything heavy
        sys.meta_path.insert(0, _PyplotImportHook(lambda module: self._patch_show()))

    def install_formatter(self, shell: Any) -> None:
        """A Figure as a cell's last expression renders as PNG, without importing matplotlib."""
        png = shell.display_formatter.formatters["image/png"]
        png.for_type_by_name("matplotlib.figure", "Figure", self._format_figure)

    def _format_figure(self, figure: Any) -> bytes:
        self._displayed.add(id(figure))
        return _figure_png(figure)

    def _patch_show(self) -> None:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None or self._patched_pyplot is pyplot:
            return
        collector = self

        def show(*args: Any, **kwargs: Any) -> None:
            collector.publish_open_figures()

        pyplot.show = show  # type: ignore[attr-defined]  # a ModuleType, patched
        self._patched_pyplot = pyplot

    def before_cell(self) -> None:
        self._displayed.clear()
        self._patch_show()

    def publish_open_figures(self) -> None:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        self._patch_show()
        for number in pyplot.get_fignums():
            figure = pyplot.figure(number)
            try:
                if id(figure) not in self._displayed:
                    self._emit({"type": "display_data", "data": _figure_bundle(figure)})
            finally:
                pyplot.close(figure)
