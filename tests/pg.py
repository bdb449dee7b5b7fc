"""A real PostgreSQL for tests: Debian's server binaries, `initdb` into a temp dir, started on
127.0.0.1 and a free port, stopped at the end. Nothing of the machine's own clusters is used.

PostgreSQL refuses to run as root, so when the tests are root the server runs as the `postgres`
system user that Debian's package creates; its temp dir (under /tmp, not pytest's 0700 root
dir, which that user could not traverse) is owned by that user.

Use: `pytest_plugins = ("tests.pg",)` in a test module (never import it: pytest must load it
first, as a plugin), then take `postgres_url` (a fresh, empty database per test on a server
shared by the session) or `own_postgres` (a server of the test's own, to stop and start).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import free_port
from tests.process import stop_process, wait_until_up

SUPERUSER = "tci"
# Test data need not survive a crash: no fsync makes initdb and every commit much cheaper.
FAST_UNSAFE = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
PR_SET_PDEATHSIG = 1


def _die_with_the_tests() -> None:
    """Runs in the server's process before exec (after its uid changed, which would clear
    it): an immediate shutdown (SIGQUIT) when the test process dies, even killed, so no
    server outlives the tests."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGQUIT)


def postgres_bin_dir() -> Path:
    """The newest installed server's binaries (Debian keeps them off PATH)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                      else 0)
    if not versions:
        raise RuntimeError("PostgreSQL is not installed: `make system` installs Debian's "
                           "`postgresql` package")
    return versions[-1].parent


class Postgres:
    """One throwaway PostgreSQL server on 127.0.0.1:`port`, data in `root`."""

    def __init__(self) -> None:
        self.bin = postgres_bin_dir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="tci-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.process: subprocess.Popen | None = None
        self._user: dict = {}
        self._names = itertools.count()
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _run(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, timeout=120, cwd=self.root,
                       **self._user)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                  "--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions")

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
             *FAST_UNSAFE],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True,
            preexec_fn=_die_with_the_tests, **self._user,
        )
        log.close()
        wait_until_up(self.process, self._accepts, timeout=60, what="postgres", log=self.log)

    def _accepts(self) -> bool:
        try:
            with psycopg.connect(self.url_for("postgres", driver=False), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are cut, as when a database server goes away."""
        stop_process(self.process, signal.SIGINT, timeout=30)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def url_for(self, database: str, driver: bool = True) -> str:
        scheme = "postgresql+psycopg" if driver else "postgresql"
        return f"{scheme}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = f"t{next(self._names)}"
        with psycopg.connect(self.url_for("postgres", driver=False), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL, initialised, started, and destroyed afterwards."""
    server = Postgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: Postgres) -> str:
    return postgres.create_database()


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    with running_postgres() as server:
        yield server
