"""A session's interpreter state, saved and restored inside its own sandbox.

Pause and snapshots (tci/sessions/pause.py) keep a session's variables, functions, classes
and imports in one file in the session's home, next to its files and pip-installed packages
(all on the session's volume). The file is written and read here, in the sandbox, with the
session's own rights: the server never unpickles it, so a crafted file runs no more than the
session's own code could.

How:
- The user namespace is pickled with dill as ONE dict, so objects shared between names stay
  shared, and an instance's class is the restored class (isinstance holds).
- Modules are saved by name (a persistent id) and imported again on restore: dill would
  otherwise pickle by value any module it does not find in a standard site-packages, which
  is every module of the sandbox runtime.
- Functions defined in the session keep the session's globals as a reference to `__main__`'s
  dict (dill's recurse=False), which IPython makes the user namespace: after a restore they
  read the live globals, not a copy.
- A name whose value cannot be pickled (a socket, a thread, a generator, ...) is left out and
  reported with why; everything else is kept. File objects are left out too: dill would
  reopen them, truncating a file that was open for writing.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import re
import sys
import types
import warnings
from typing import Any

FORMAT = 1
# IPython's own names in the user namespace (history, output caches): never the user's.
_IPYTHON_NAME = re.compile(r"^(_+|_i+|_i\d+|_\d+|_ih|_oh|_dh|_ii|_iii|_exit_code|In|Out)$")


class StateTooLarge(Exception):
    pass


class _Capped(io.RawIOBase):
    """A file writer that refuses to grow past `limit` bytes (TCI_MAX_STATE_BYTES)."""

    def __init__(self, raw: Any, limit: int) -> None:
        self.raw, self.limit, self.written = raw, limit, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        size = len(memoryview(data))
        self.written += size
        if self.written > self.limit:
            raise StateTooLarge(f"the session's state is larger than {self.limit} bytes "
                                "(TCI_MAX_STATE_BYTES)")
        return int(self.raw.write(data))


def _pickler_class() -> type:
    import dill  # type: ignore[import-not-found, unused-ignore]  # the sandbox runtime's

    class Pickler(dill.Pickler):  # type: ignore[misc, unused-ignore]
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, types.ModuleType) and obj.__name__ != "__main__":
                return ("module", obj.__name__)
            _refuse_files(obj)
            return None

    return Pickler


def _module_ref(pid: Any) -> Any:
    """A module saved by name (persistent id ("module", name)), imported again."""
    kind, name = pid
    if kind != "module":
        raise ValueError(f"unknown reference {kind!r} in the saved state")
    return importlib.import_module(name)


def _unpickler_class() -> type:
    import dill  # type: ignore[import-not-found, unused-ignore]  # the sandbox runtime's

    class Unpickler(dill.Unpickler):  # type: ignore[misc, unused-ignore]
        def persistent_load(self, pid: Any) -> Any:
            return _module_ref(pid)

    return Unpickler


def user_names(shell: Any) -> dict[str, Any]:
    """The namespace as the user made it: IPython's own entries left out."""
    hidden = shell.user_ns_hidden
    return {name: value for name, value in shell.user_ns.items()
            if not (name in hidden and hidden[name] is value)
            and not name.startswith("__") and not _IPYTHON_NAME.match(name)}


def _dump(pickler_class: type, obj: Any, out: Any) -> None:
    pickler = pickler_class(out, protocol=5, recurse=False, byref=False)
    pickler.dump(obj)


def _why(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:197] + "..."


# The file: MAGIC, then the kind (FAST or DILL) and the offset of the side table (FAST only),
# then the namespace's pickle.
MAGIC, FAST, DILL = b"TCISTATE", b"F", b"D"
_HEADER = len(MAGIC) + 1 + 8


def _session_made(obj: Any) -> bool:
    """A function or class defined in the session: the C pickler would save it by name."""
    return isinstance(obj, types.FunctionType | type) and getattr(obj, "__module__", None) \
        == "__main__"


def _refuse_files(obj: Any) -> None:
    if isinstance(obj, io.IOBase):
        # dill would reopen it on restore, and a file opened for writing would then be
        # truncated: the file itself is kept, its open handle is not.
        raise TypeError("an open file object cannot be kept (the file itself is); open it "
                        "again after resuming")


class _FastPickler(pickle.Pickler):
    """The C pickler (an order of magnitude faster than dill's pure-Python one on data), with
    what it cannot do by itself handed to dill: each function and class defined in the
    session once, in a side table, referred to by index so that sharing is kept. Its
    reducer_override is called only for objects that are not plain str, dict, list, ...:
    data costs no Python call per object."""

    def __init__(self, out: Any, dill_pickler: type) -> None:
        super().__init__(out, protocol=5)
        self.dill_pickler = dill_pickler
        self.side: list[bytes] = []
        self.indexes: dict[int, int] = {}
        self.keep: list[Any] = []  # ids stay unique while the table refers to them

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.ModuleType) and obj.__name__ != "__main__":
            return (importlib.import_module, (obj.__name__,))
        _refuse_files(obj)
        if _session_made(obj):
            index = self.indexes.get(id(obj))
            if index is None:
                blob = io.BytesIO()
                _dump(self.dill_pickler, obj, blob)
                index = self.indexes[id(obj)] = len(self.side)
                self.side.append(blob.getvalue())
                self.keep.append(obj)
            return (_side_object, (index,))
        return NotImplemented


# The side table of the state being loaded (one load at a time: the worker is single-threaded).
_loading: dict[str, Any] = {"side": [], "loaded": {}}


def _side_object(index: int) -> Any:
    """A function or class of the side table, loaded with dill once per load (dill is
    imported only here: a namespace of data alone loads without it, ~20 ms sooner)."""
    loaded = _loading["loaded"]
    if index not in loaded:
        loaded[index] = _unpickler_class()(io.BytesIO(_loading["side"][index])).load()
    return loaded[index]


def save(shell: Any, path: str, max_bytes: int) -> dict[str, Any]:
    """Write the namespace to `path`; {"size", "saved", "skipped": [{"name", "reason"}]}."""
    pickler_class = _pickler_class()
    names = user_names(shell)
    skipped: list[dict[str, str]] = []
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dill's PicklingWarnings would be the cell's stderr
        payload = {"format": FORMAT, "cwd": os.getcwd(), "names": names}
        try:
            _write(pickler_class, payload, path, max_bytes, fast=True)
        except StateTooLarge:
            raise
        except Exception:  # something in it cannot be pickled: find which, leave those out
            fast = True
            for name, value in list(names.items()):
                try:
                    _FastPickler(_Capped(_Null(), max_bytes), pickler_class).dump(value)
                    continue
                except StateTooLarge:
                    raise
                except Exception:  # dill may still do it (slowly), as it does more kinds
                    pass
                try:
                    _dump(pickler_class, value, _Capped(_Null(), max_bytes))
                    fast = False
                except StateTooLarge:
                    raise
                except Exception as exc:
                    skipped.append({"name": name, "reason": _why(exc)})
                    del names[name]
            _write(pickler_class, payload, path, max_bytes, fast=fast)
    return {"size": os.path.getsize(path), "saved": len(names), "skipped": skipped}


class _Null(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(memoryview(data))


def _write(pickler_class: type, payload: Any, path: str, max_bytes: int, fast: bool) -> None:
    partial = path + ".partial"
    try:
        with open(partial, "wb", buffering=0) as raw:  # pwrite below: no buffer of its own
            capped = io.BufferedWriter(_Capped(raw, max_bytes), 1 << 20)
            capped.write(MAGIC + (FAST if fast else DILL) + bytes(8))
            if fast:
                pickler = _FastPickler(capped, pickler_class)
                pickler.dump(payload)
                capped.flush()
                offset = raw.tell()
                pickle.dump(pickler.side, capped, protocol=5)
            else:
                _dump(pickler_class, payload, capped)
            capped.flush()
            if fast:
                os.pwrite(raw.fileno(), offset.to_bytes(8, "little"), len(MAGIC) + 1)
        os.replace(partial, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(partial)


def _load(handle: Any) -> Any:
    header = handle.read(_HEADER)
    if len(header) != _HEADER or not header.startswith(MAGIC):
        raise ValueError("the saved state is not in a format this worker reads")
    if header[len(MAGIC):len(MAGIC) + 1] == DILL:
        return _unpickler_class()(handle).load()
    handle.seek(int.from_bytes(header[len(MAGIC) + 1:], "little"))
    side = pickle.load(handle)
    if not isinstance(side, list) or not all(isinstance(b, bytes) for b in side):
        raise ValueError("the saved state's table of functions and classes is damaged")
    _loading.update(side=side, loaded={})
    try:
        handle.seek(_HEADER)
        return pickle.Unpickler(handle).load()
    finally:
        _loading.update(side=[], loaded={})


def restore(shell: Any, path: str, max_bytes: int) -> dict[str, Any]:
    """Load the namespace saved at `path` into the shell; raises with a clear message if the
    file is missing, too large or not a state this module wrote."""
    size = os.path.getsize(path)
    if size > max_bytes:
        raise StateTooLarge(f"the saved state is {size} bytes, more than {max_bytes} "
                            "(TCI_MAX_STATE_BYTES)")
    with warnings.catch_warnings(), open(path, "rb") as handle:
        warnings.simplefilter("ignore")
        payload = _load(handle)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT \
            or not isinstance(payload.get("names"), dict):
        raise ValueError("the saved state is not in a format this worker reads")
    shell.user_ns.update(payload["names"])
    cwd = payload.get("cwd")
    if isinstance(cwd, str):
        with contextlib.suppress(OSError):
            os.chdir(cwd)
    sys.path_importer_cache.clear()  # packages installed into the user site before the pause
    return {"restored": len(payload["names"])}
