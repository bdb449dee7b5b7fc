"""Host actors on the cluster: which nodes offer sessions, and the actor of each, found by
name or started. Any gateway (or `tci hosts`) may call this at any time: a host actor is
created once, by whoever asks first (Ray's get_if_exists), and outlives the caller."""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tci.cluster.host_actor import HostActor

RESOURCE = "tci_host"  # the custom resource a node offers to run sessions (`ray start`)
_HostActor = ray.remote(HostActor)


def host_name(node_id: str) -> str:
    """The actor's name, and the `host` of its sessions in the store: the node's id, which a
    node that comes back gets anew, so its new host starts clean under a new name."""
    return f"tci-host-{node_id[:16]}"


def host_nodes() -> dict[str, str]:
    """Live nodes offering `tci_host`: host name -> node id."""
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return {host_name(node["NodeID"]): node["NodeID"] for node in nodes
            if node["Alive"] and node["Resources"].get(RESOURCE, 0) >= 1}


def host_actor(node_id: str, namespace: str) -> Any:
    """The node's host actor (a handle), started if it is not running: detached, pinned to
    the node by affinity and by taking its whole `tci_host` (so one per node), asynchronous
    with room for every session's calls at once, and never restarted by Ray (a host that
    comes back starts clean, under the name of its new node id)."""
    return _HostActor.options(
        name=host_name(node_id), namespace=namespace, lifetime="detached",
        get_if_exists=True, resources={RESOURCE: 1}, num_cpus=0, max_concurrency=100_000,
        max_restarts=0, max_task_retries=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(host_name(node_id))
