""""Open a viewer" calls answered inline, the way `plt.show()` returns its figure.

A sandbox has no screen. Without this module Pillow's `Image.show()` runs `xdg-open` when the
host has one (Chromium's packages bring it) and prints its failure, `webbrowser.open()` of the
file Bokeh's `show()` just wrote finds no browser and returns False, and OpenCV's headless
build raises on `cv2.imshow()`. Each is redirected to a `display_data` event the moment its
module is imported, never earlier: a cell that uses none of them pays nothing, and the worker
imports no heavy package and starts no thread at start (it must stay fast and fork-safe).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import io
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from IPython.lib.pretty import pretty

from .shell import Emit, jsonable_bundle

# A local file that `webbrowser.open` shows inline, by type; any other URL goes to the browsers
# Python finds (none in a sandbox, so it returns False as before).
_INLINE_FILE_TYPES = ("text/html", "image/svg+xml", "image/png", "image/jpeg", "image/gif")


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `callback(module)` right after the named module has been executed, wherever and
    however it is imported (`import PIL.ImageShow`, Pillow's own lazy `from . import ...`)."""

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self._name = name
        self._callback = callback

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self._name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module, callback = spec.loader.exec_module, self._callback

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            # The module that ends up imported: cv2's loader replaces itself in sys.modules.
            with contextlib.suppress(Exception):  # a failed patch must not fail the import
                callback(sys.modules.get(name, module))

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def _after_import(name: str, callback: Callable[[ModuleType], None]) -> None:
    sys.meta_path.insert(0, _AfterImport(name, callback))
    if name in sys.modules:
        callback(sys.modules[name])


class Viewers:
    """Installs the inline viewers; each sends what it shows through `emit`."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit

    def install(self) -> None:
        _after_import("PIL.ImageShow", self._register_pillow_viewer)
        _after_import("webbrowser", self._patch_webbrowser)
        _after_import("cv2", self._patch_opencv)

    def display(self, data: dict[str, Any]) -> None:
        self._emit({"type": "display_data", "data": jsonable_bundle(data)})

    # -- Pillow ---------------------------------------------------------------------------

    def _register_pillow_viewer(self, image_show: ModuleType) -> None:
        if any(getattr(viewer, "tci_inline", False) for viewer in image_show._viewers):
            return  # importlib.reload: registered once
        viewers = self

        class InlineViewer(image_show.Viewer):  # type: ignore[name-defined,misc]
            """First of Pillow's viewers: shows every image, as PNG, in the cell's output."""

            tci_inline = True

            def show(self, image: Any, **options: Any) -> int:
                viewers.display({"image/png": _pillow_png(image),
                                 "text/plain": pretty(image)})  # type: ignore[no-untyped-call]
                return 1

        image_show.register(InlineViewer(), order=-1)

    # -- webbrowser -----------------------------------------------------------------------

    def _patch_webbrowser(self, webbrowser: ModuleType) -> None:
        browse = webbrowser.open
        if getattr(browse, "tci_inline", False):
            return
        viewers = self

        def open_inline(url: str, new: int = 0, autoraise: bool = True) -> bool:
            shown = viewers._show_local_file(url)
            return True if shown else browse(url, new, autoraise)

        open_inline.tci_inline = True  # type: ignore[attr-defined]
        # open_new and open_new_tab call the module's `open`, so they are covered too.
        webbrowser.open = open_inline  # type: ignore[attr-defined]  # a ModuleType, patched

    def _show_local_file(self, url: str) -> bool:
        import mimetypes  # here: the worker does not import it at start

        parsed = urllib.parse.urlparse(url)
        if parsed.scheme == "file":
            path = Path(urllib.parse.unquote(parsed.path))
        elif not parsed.scheme:
            path = Path(url)
        else:
            return False  # http(s) and the rest: there is nothing local to show
        kind = mimetypes.guess_type(path.name)[0]
        if kind not in _INLINE_FILE_TYPES or not path.is_file():
            return False
        try:
            content = path.read_bytes()
        except OSError:
            return False  # unreadable: left to the browsers, as before
        if not kind.startswith("image/") or kind == "image/svg+xml":
            content = content.decode("utf-8", "replace")  # type: ignore[assignment]
        self.display({kind: content, "text/plain": str(path)})
        return True

    # -- OpenCV ---------------------------------------------------------------------------

    def _patch_opencv(self, cv2: ModuleType) -> None:
        if getattr(cv2.imshow, "tci_inline", False):
            return
        viewers = self

        def imshow(winname: str, mat: Any) -> None:
            """The window's image, as PNG (OpenCV's own encoder: BGR order, 16-bit kept)."""
            ok, encoded = cv2.imencode(".png", mat)
            if not ok:
                raise cv2.error(f"imshow: could not encode the image of window {winname!r}")
            viewers.display({"image/png": encoded.tobytes(), "text/plain": str(winname)})

        imshow.tci_inline = True  # type: ignore[attr-defined]
        cv2.imshow = imshow  # type: ignore[attr-defined]  # a ModuleType, patched
        # The desktop idiom around imshow (wait for a key, close the windows) then runs through
        # as it would with no key pressed, instead of raising "not implemented".
        for name in ("waitKey", "waitKeyEx", "pollKey"):
            setattr(cv2, name, _no_key)
        for name in ("namedWindow", "destroyWindow", "destroyAllWindows"):
            setattr(cv2, name, _no_window)


def _no_key(*args: Any, **kwargs: Any) -> int:
    return -1


def _no_window(*args: Any, **kwargs: Any) -> None:
    return None


def _pillow_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    try:
        image.save(buffer, format="PNG")
    except (OSError, KeyError, ValueError):
        # A mode PNG cannot hold (CMYK, YCbCr, F...): converted the way Pillow's viewers do.
        from PIL import Image

        buffer = io.BytesIO()
        image.convert(Image.getmodebase(image.mode)).save(buffer, format="PNG")
    return buffer.getvalue()


def install(emit: Emit) -> Viewers:
    viewers = Viewers(emit)
    viewers.install()
    return viewers

