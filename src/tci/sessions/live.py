"""A live session as the manager keeps it: who owns it, its clock, its lock, its host's
handle (hosts/base.py), and how it ended once it has. Shared by the manager and its pause and
resume part (pause.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tci.hosts.base import EndReason, HostedSession


@dataclass
class LiveSession:
    id: str
    key_id: int
    started_at: datetime
    expires_at: datetime
    hosted: HostedSession
    execute_count: int = 0
    last_execute_at: datetime | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ended: EndReason | None = None
    paused: bool = False  # set once paused: it left the table, its state is kept (pause.py)

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "execute_count": self.execute_count,
            "started_at": self.started_at,
            "last_execute_at": self.last_execute_at or self.started_at,
            "expires_at": self.expires_at,
            "status": "running",
        }
