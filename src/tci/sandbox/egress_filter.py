"""What an `egress` sandbox may reach: the internet, not the host's neighbourhood.

slirp4netns makes connections from the host on the sandbox's behalf, so without a filter a
sandbox could reach anything the host can: private networks, link-local metadata services,
the host's own addresses (and so a server bound to 0.0.0.0). An nftables table inside the
sandbox's network namespace rejects those destinations. The namespace is owned by the
host's user namespace and the sandbox holds no capability over it, so its code cannot
change these rules.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import subprocess

from tci.errors import SandboxUnavailable

# slirp4netns answers DNS here; it is inside 10.0.0.0/8, so it is allowed first.
SLIRP_DNS = "10.0.2.3"

# Private, shared (CGNAT), loopback, link-local (cloud metadata), "this network", IETF
# protocol assignments, benchmarking, multicast and reserved space. The documentation ranges
# (TEST-NET) are deliberately absent: some networks, this workplace's among them, serve
# their package mirrors from such an address, and they are not anyone's private network.
BLOCKED_V4 = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4",
    "240.0.0.0/4",
)
BLOCKED_V6 = (
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "100::/64", "fc00::/7",
    "fe80::/10", "ff00::/8",
)


def host_addresses() -> list[str]:
    """The host's own addresses, so a server listening on all interfaces stays unreachable."""
    try:
        out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, timeout=10)
        interfaces = json.loads(out.stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    addresses = []
    for interface in interfaces:
        for info in interface.get("addr_info", []):
            if "local" in info:
                addresses.append(info["local"])
    return addresses


def ruleset(extra_blocked: list[str]) -> str:
    v4, v6 = list(BLOCKED_V4), list(BLOCKED_V6)
    for address in extra_blocked:
        parsed = ipaddress.ip_address(address)
        (v4 if parsed.version == 4 else v6).append(str(parsed))
    return f"""
table inet tci_egress {{
  chain output {{
    type filter hook output priority 0; policy accept;
    oifname "lo" accept
    ip daddr {SLIRP_DNS} meta l4proto {{ tcp, udp }} th dport 53 accept
    ip daddr {{ {", ".join(v4)} }} reject with icmpx type admin-prohibited
    ip6 daddr {{ {", ".join(v6)} }} reject with icmpx type admin-prohibited
  }}
}}
"""


class EgressFilter:
    """Built once per server (host addresses read at start), applied to each sandbox."""

    def __init__(self) -> None:
        self.nft = shutil.which("nft")
        self.nsenter = shutil.which("nsenter")
        self.rules = ruleset(host_addresses())

    def check(self) -> None:
        if self.nft is None or self.nsenter is None:
            raise SandboxUnavailable(
                "TCI_NETWORK=egress needs nftables and nsenter (apt-get install nftables "
                "util-linux) to keep sandboxes away from private and host addresses"
            )

    async def apply(self, pid: int) -> None:
        """Load the rules into the network namespace of `pid` (before any traffic flows)."""
        self.check()
        process = await asyncio.create_subprocess_exec(
            self.nsenter, f"--net=/proc/{pid}/ns/net", "--", self.nft, "-f", "-",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await process.communicate(self.rules.encode())
        if process.returncode != 0:
            raise SandboxUnavailable(
                f"could not install the sandbox's egress filter: {stderr.decode().strip()}"
            )
