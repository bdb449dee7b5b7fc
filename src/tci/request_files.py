"""The files a request brings, checked against the server's limits (Settings) before anything
is written, all or nothing: how many, their names, their sizes one by one and together, and
that no name is both a file and another's directory. Writing them is tci/workspace.py's.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable, Iterable, Sequence

from tci.config import Settings
from tci.errors import BadRequest, PayloadTooLarge
from tci.schemas import FileInput
from tci.workspace import DecodedFile, split_path


def decode_files(files: Iterable[FileInput], settings: Settings) -> list[DecodedFile]:
    """The files of a JSON request (text or base64), checked."""
    return _checked([(item.name, functools.partial(_content_of, item)) for item in files],
                    settings)


def check_file(name: str, content: bytes, settings: Settings) -> DecodedFile:
    """One file sent as its raw bytes (PUT .../files/<name>): the checks of a request of one."""
    (checked,) = _checked([(name, lambda: content)], settings)
    return checked


def _content_of(item: FileInput) -> bytes:
    if item.encoding != "base64":
        return item.content.encode()
    try:
        return base64.b64decode(item.content, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"file {item.name!r} is not valid base64: {exc}") from exc


def _checked(files: Sequence[tuple[str, Callable[[], bytes]]],
             settings: Settings) -> list[DecodedFile]:
    """Each file's content is read (decoded) only once its name passed, so a request's first
    fault is the one reported, whatever kind it is."""
    if len(files) > settings.max_files_per_request:
        raise PayloadTooLarge(
            f"{len(files)} files in one request; the limit is {settings.max_files_per_request} "
            "(TCI_MAX_FILES_PER_REQUEST)"
        )
    decoded: list[DecodedFile] = []
    total = 0
    seen: set[tuple[str, ...]] = set()
    for name, read in files:
        parts = split_path(name, settings.max_filename_length)
        if parts in seen:
            raise BadRequest(f"file {name!r} appears twice in the request")
        seen.add(parts)
        content = read()
        if len(content) > settings.max_file_bytes:
            raise PayloadTooLarge(
                f"file {name!r} is {len(content)} bytes; the limit is "
                f"{settings.max_file_bytes} bytes per file (TCI_MAX_FILE_BYTES)"
            )
        total += len(content)
        if total > settings.max_files_bytes:
            raise PayloadTooLarge(
                f"the files of this request exceed {settings.max_files_bytes} bytes in total "
                "(TCI_MAX_FILES_BYTES)"
            )
        decoded.append(DecodedFile(parts, content))
    # A name must not be both a file and a directory of another file in the same request.
    for file in decoded:
        for depth in range(1, len(file.parts)):
            if file.parts[:depth] in seen:
                raise BadRequest(f"{'/'.join(file.parts[:depth])!r} is both a file and a directory")
    return decoded
