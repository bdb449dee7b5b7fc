"""Session ids: unguessable names given to a sandbox when it starts.

The id a client sees is also the name of the session's sandbox directory and cgroup, so it
is chosen before the sandbox starts (a pooled one carries it until it is handed out), and
it holds only letters and digits.
"""

from __future__ import annotations

import secrets
import string

_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 24  # ~143 bits: unguessable


def new_session_id() -> str:
    return "ses_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))
