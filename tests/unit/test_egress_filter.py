"""The egress filter: what is refused, the rules it renders, the settings it reads, and the
cluster feed, which updates a live namespace's rules (one of the test's own)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import time

import pytest

from tci.errors import SandboxUnavailable
from tci.sandbox import egress_filter
from tci.sandbox.egress_filter import (
    METADATA_ENDPOINTS,
    ClusterFeed,
    EgressFilter,
    database_networks,
    fixed_never,
    fixed_refusals,
    ruleset,
)
from tci.sandbox.fork.pools import new_network_namespace


def refuses(networks: set, address: str) -> bool:
    target = ipaddress.ip_address(address)
    return any(target in network for network in networks)


def test_every_metadata_endpoint_is_refused_including_public_ones():
    refused = fixed_refusals()
    assert all(refuses(refused, address) for address in METADATA_ENDPOINTS)
    assert refuses(refused, "168.63.129.16")  # Azure WireServer: in no reserved range
    assert not refuses(refused, "168.63.129.17")


def test_operator_refusals_are_added_and_checked():
    assert refuses(fixed_refusals(["198.51.100.0/24"]), "198.51.100.9")
    with pytest.raises(SandboxUnavailable, match="TCI_EGRESS_REFUSE"):
        EgressFilter(["not an address"])


def test_overlapping_refusals_are_collapsed_for_the_interval_sets():
    # 127.0.0.0/8 and 127.0.0.1 are both local routes; an interval set refuses overlaps.
    rules = ruleset({ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"),
                     ipaddress.ip_network("::1/128")}, set())
    assert "127.0.0.0/8" in rules and "127.0.0.1," not in rules and "127.0.0.1 " not in rules


def test_metadata_and_link_local_are_in_the_tier_nothing_opens():
    never = fixed_never()
    assert refuses(never, "169.254.1.1") and refuses(never, "fd00:ec2::254")
    assert all(refuses(never, address) for address in METADATA_ENDPOINTS)
    assert not refuses(never, "10.1.2.3")  # a private range: TCI_EGRESS_ALLOW may open it


def test_rules_check_dns_then_never_then_allowed_then_refused():
    net = ipaddress.ip_network
    rules = ruleset({net("169.254.0.0/16")}, {net("203.0.113.0/24")}, {net("203.0.113.0/25")},
                    ["192.0.2.53"])
    order = [rules.index(rule) for rule in (
        "ip daddr { 192.0.2.53 } meta l4proto { tcp, udp } th dport 53 accept",
        "ip daddr @never_v4 reject", "ip daddr @allowed_v4 accept", "ip daddr @refused_v4 reject")]
    assert order == sorted(order)
    assert "10.0.2.3" not in rules  # slirp4netns's own forwarder is no way out any more


def test_allow_and_dns_settings_are_checked():
    with pytest.raises(SandboxUnavailable, match="TCI_EGRESS_ALLOW"):
        EgressFilter(allowed=["203.0.113.0/33"])
    for bad in ("127.0.0.53", "2001:db8::53", "resolver.example"):
        with pytest.raises(SandboxUnavailable, match="TCI_EGRESS_DNS"):
            EgressFilter(dns=[bad])
    assert EgressFilter(dns=[]).dns == []
    assert EgressFilter(dns=["192.0.2.53"]).dns == ["192.0.2.53"]


def test_unset_dns_is_the_hosts_resolvers_behind_a_local_stub(tmp_path, monkeypatch):
    system, upstream = tmp_path / "resolv.conf", tmp_path / "upstream.conf"
    system.write_text("# stub\nnameserver 127.0.0.53\noptions edns0\n")
    upstream.write_text("nameserver 192.0.2.53\nnameserver 2001:db8::53\nnameserver 192.0.2.54\n")
    monkeypatch.setattr(egress_filter, "_SYSTEM_RESOLV_CONF", system)
    monkeypatch.setattr(egress_filter, "_RESOLVED_UPSTREAM", upstream)
    assert EgressFilter().dns == ["192.0.2.53", "192.0.2.54"]  # IPv4: sessions have no IPv6


def test_database_host_is_found_in_the_url():
    def found(url: str) -> set[str]:
        return {str(network) for network in database_networks(url)}

    assert found("postgresql+psycopg://tci@127.0.0.9:5433/tci") == {"127.0.0.9/32"}
    assert found("postgresql://tci@[::1]/tci") == {"::1/128"}
    assert found("postgresql+psycopg://tci@/tci?host=127.0.0.7,127.0.0.8") == {
        "127.0.0.7/32", "127.0.0.8/32"}
    assert "127.0.0.1/32" in found("postgresql://tci@localhost/tci")  # resolved (/etc/hosts)
    assert found("postgresql://tci@/tci?host=/var/run/postgresql") == set()  # a UNIX socket
    assert found("sqlite:////var/lib/tci/tci.db") == set()


def listed(fd: int) -> set[str]:
    """Every element of the namespace's sets, by set name ("never_v4": {...})."""
    listing = subprocess.run(
        ["nsenter", f"--net=/proc/self/fd/{fd}", "--", "nft", "-j", "list", "table", "inet",
         "tci_egress"], capture_output=True, text=True, timeout=30, pass_fds=(fd,), check=True)
    found = set()
    for item in json.loads(listing.stdout)["nftables"]:
        for element in item.get("set", {}).get("elem", []):
            if isinstance(element, dict) and "prefix" in element:
                element = f"{element['prefix']['addr']}/{element['prefix']['len']}"
            found.add(f"{item['set']['name']} {element}")
    return found


async def wait_listed(fd: int, entry: str) -> set[str]:
    deadline = time.monotonic() + 30  # a liveness bound, generous for a loaded machine
    while entry not in (found := listed(fd)):
        assert time.monotonic() < deadline, f"{entry} never appeared in {found}"
        await asyncio.sleep(0.05)
    return found


def test_cluster_feed_refuses_nodes_in_live_sandboxes_as_they_join():
    if os.geteuid() != 0:
        pytest.skip("nft in a new network namespace needs root")
    nodes = [{"NodeManagerAddress": "198.51.100.7", "Alive": True}]

    egress = EgressFilter(dns=[])

    async def scenario() -> tuple[set[str], set[str]]:
        namespace = await egress.attach_fd(new_network_namespace())
        feed = ClusterFeed(egress, lambda: list(nodes), period=0.05)
        try:
            await feed.start()
            first = await wait_listed(namespace.fd, "never_v4 198.51.100.7")
            nodes.append({"NodeManagerAddress": "203.0.113.9", "Alive": True})
            return first, await wait_listed(namespace.fd, "never_v4 203.0.113.9")
        finally:
            await feed.close()
            namespace.close()

    first, then = asyncio.run(scenario())
    assert "never_v4 203.0.113.9" not in first
    assert "never_v4 198.51.100.7" in then
    # A sandbox started later has every node in its first rules.
    assert "203.0.113.9/32" in egress.ruleset()
