"""`tci hosts`: start the host actor of every tci_host node (as a gateway does) and list
them with their capacity, so an operator can see the cluster before starting gateways."""

from __future__ import annotations

import asyncio
import logging

from tci.config import Settings


def list_hosts(settings: Settings) -> int:
    import ray

    from tci.cluster import actors
    from tci.cluster.host_actor import HostInfo, Reply

    ray.init(address=settings.ray_address, namespace=settings.ray_namespace,
             logging_level=logging.WARNING, log_to_driver=False)
    nodes = actors.host_nodes()
    if not nodes:
        print(f"no node offers the {actors.RESOURCE} resource: start hosts with "
              f"ray start --address=HEAD:PORT --resources='{{\"{actors.RESOURCE}\": 1}}'")
        return 1

    async def started() -> list[Reply]:
        handles = [actors.host_actor(node, settings.ray_namespace) for node in nodes.values()]
        return list(await asyncio.gather(*(
            asyncio.wait_for(h.start.remote(), settings.ray_host_start_timeout)
            for h in handles)))

    print(f"{'HOST':<26} {'LIVE':>5} {'FREE':>5} {'POOL':>6}  STATE")
    failed = 0
    for name, reply in zip(nodes, asyncio.run(started()), strict=True):
        if reply.error is not None:
            failed += 1
            print(f"{name:<26} {'-':>5} {'-':>5} {'-':>6}  refused: {reply.error.message}")
            continue
        info: HostInfo = reply.value
        print(f"{name:<26} {info.live:>5} {info.free:>5} "
              f"{info.pool_ready:>3}/{info.pool_size:<2}  ready")
    return 1 if failed else 0
