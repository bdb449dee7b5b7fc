"""The egress filter's pure parts: what is refused, and the rules it renders."""

from __future__ import annotations

import ipaddress

import pytest

from tci.errors import SandboxUnavailable
from tci.sandbox.egress_filter import METADATA_ENDPOINTS, EgressFilter, fixed_refusals, ruleset


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
                     ipaddress.ip_network("::1/128")})
    assert "127.0.0.0/8" in rules and "127.0.0.1," not in rules and "127.0.0.1 " not in rules
