"""One real cluster for the tests of tests/cluster: PostgreSQL, a Ray head, two host nodes
(`tci_host`) and two gateways (`tci serve --ray-address`), all inside a network namespace
the test process steps into (netns.py), so nothing of Ray's leaves loopback."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cluster.netns import private_network
from tests.cluster.raycluster import Node, RayCluster, ray_env, release_host
from tests.conftest import TCI, TEST_WORKSPACE_BYTES, Server, cli, free_port

HOSTS = ("host-a", "host-b")


def shared_state_dir(root: Path) -> Path:
    """TCI_STATE_DIR of every host (NFS or a shared volume on a real cluster)."""
    return root / "state"


def host_env(root: Path, index: int) -> dict[str, str]:
    """A host node's own settings: two hosts share this machine, so each has its own data
    and sandbox directories (and cgroup parent) and its own sandbox uids; the state of
    paused sessions and snapshots is in one directory both use, as a cluster's shared one."""
    return {"TCI_DATA_DIR": str(root / f"tci-{HOSTS[index]}"),
            "TCI_STATE_DIR": str(shared_state_dir(root)),
            "TCI_SANDBOX_UID_BASE": str(300_000 + 20_000 * index),
            "TCI_POOL_SIZE": "0", "TCI_MAX_SESSIONS": "40", "TCI_NETWORK": "none",
            "TCI_WORKSPACE_MAX_BYTES": str(TEST_WORKSPACE_BYTES)}


@dataclass
class Cluster:
    root: Path
    ray: RayCluster
    hosts: dict[str, Node]  # node name (host-a, host-b) -> its Ray node
    postgres: Any  # tests.pg.Postgres
    database_url: str
    key: str
    gateways: list[Server]
    hosts_listing: str  # what `tci hosts` printed

    def gateway_env(self) -> dict[str, str]:
        return {"TCI_RAY_ADDRESS": self.ray.address, "TCI_DATABASE_URL": self.database_url,
                "TCI_POOL_SIZE": "0", "TCI_RAY_DISCOVER_SECONDS": "1", **ray_env()}

    def start_gateway(self, name: str) -> Server:
        data_dir = self.root / f"gateway-{name}"
        data_dir.mkdir(exist_ok=True)
        gateway = Server(data_dir, free_port(), self.key, self.gateway_env())
        gateway.start()
        return gateway

    def sql(self, query: str, *args: object) -> list[tuple]:
        url = self.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url) as db:
            return db.execute(query, args).fetchall()

    def host_of(self, session_id: str) -> str:
        """The host actor's name that the store routes the session to."""
        return self.sql("SELECT host FROM sessions WHERE id = %s", session_id)[0][0]

    def host_names(self) -> set[str]:
        return {line.split()[0] for line in self.hosts_listing.splitlines()
                if line.startswith("tci-host-")}


@pytest.fixture(scope="module")  # the netns ends with test_cluster.py, not the session
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("the cluster tests make a network namespace and run hosts as root")
    # Imported here, not at collection: tests/pg.py is also a plugin of other modules, and
    # pytest must load it first to rewrite its asserts.
    from tests.pg import Postgres

    root = tmp_path_factory.mktemp("cluster")
    with private_network():
        postgres = Postgres()
        ray = RayCluster(root)
        gateways: list[Server] = []
        try:
            postgres.init()
            postgres.start()
            database_url = postgres.create_database()
            ray.start_head()
            hosts = {name: ray.add_host(name, host_env(root, i)) for i, name in enumerate(HOSTS)}
            # `tci hosts` starts each node's host actor and waits for its self-check.
            listed = subprocess.run([TCI, "hosts", "--ray-address", ray.address],
                                    env={**os.environ, **ray_env()}, capture_output=True,
                                    text=True, timeout=600)
            assert listed.returncode == 0, listed.stdout + listed.stderr
            created = cli(root, "keys", "create", "--name", "test",
                          env={"TCI_DATABASE_URL": database_url})
            assert created.returncode == 0, created.stderr
            state = Cluster(root, ray, hosts, postgres, database_url,
                            created.stdout.strip().splitlines()[-1], gateways, listed.stdout)
            gateways += [state.start_gateway("a"), state.start_gateway("b")]
            yield state
        finally:
            for gateway in gateways:
                gateway.stop()
            ray.stop()
            postgres.destroy()
            for index in range(len(HOSTS)):
                release_host(host_env(root, index))

