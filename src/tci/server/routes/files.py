from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tci.server.auth import require_key
from tci.server.openapi import RAW_BODY, RAW_RESPONSE
from tci.storage.store import KeyInfo

router = APIRouter(tags=["files"])


@router.get("/tci/sessions/{session_id}/files")
async def list_files(
    session_id: str, request: Request, key: Annotated[KeyInfo, Depends(require_key)]
) -> dict[str, Any]:
    """The session's working directory: every regular file with its size and mtime;
    `truncated` when the listing stopped at a limit (TCI_MAX_FILES_LISTED/_SCANNED)."""
    files = await request.app.state.manager.list_files(key, session_id)
    return {"data": {"files": [
        {"path": f.path, "size": f.size,
         "modified": datetime.fromtimestamp(f.modified, UTC).isoformat()}
        for f in files
    ], "truncated": files.truncated}, "errors": None}


@router.get("/tci/sessions/{session_id}/files/{path:path}", response_class=Response,
            responses=RAW_RESPONSE)
async def download(
    session_id: str, path: str, request: Request, key: Annotated[KeyInfo, Depends(require_key)]
) -> Response:
    """One file's bytes."""
    content = await request.app.state.manager.read_file(key, session_id, path)
    return Response(content, media_type="application/octet-stream")


@router.put("/tci/sessions/{session_id}/files/{path:path}", openapi_extra=RAW_BODY)
async def upload(
    session_id: str, path: str, request: Request, key: Annotated[KeyInfo, Depends(require_key)]
) -> dict[str, Any]:
    """Write the request body as one file (directories created as needed)."""
    size = await request.app.state.manager.write_file(key, session_id, path, await request.body())
    return {"data": {"path": path, "size": size}, "errors": None}
