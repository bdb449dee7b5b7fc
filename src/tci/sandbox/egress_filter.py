"""What an `egress` sandbox may reach: the public internet, not the host or its neighbourhood.

Sessions get the internet so that `!pip install`, `git clone` and API calls work. slirp4netns
makes those connections from the host on the sandbox's behalf, so without a filter a sandbox
could reach anything the host can: the host's own services (a server bound to 0.0.0.0
answers on every address the host holds), its private networks and its cloud's metadata
service (instance credentials). An nftables table inside the sandbox's network namespace
rejects those destinations before slirp4netns sees them. The namespace is owned by the
host's user namespace and the sandbox holds no capability over it, so its code cannot
change these rules.

What is refused:
- ranges that are by definition local to a host or its site (REFUSED_V4, REFUSED_V6);
- the cloud metadata endpoints, some of which sit in public ranges (METADATA_ENDPOINTS);
- whatever the host delivers to itself, by route (host_routes.py), followed live: a route
  added while sessions run reaches every live sandbox's filter (`nft add element`), and a
  sandbox started later has it before its network exists;
- the operator's own additions (TCI_EGRESS_REFUSE), e.g. neighbours with public addresses.
Everything else counts as the internet, including ranges reserved for documentation: no
host or site holds them as a private network, and some networks route them to ordinary
services (package indexes, proxies) that sessions must reach.

Why a filter in each sandbox, refreshed, rather than a check at the host: the only place
that sees the host's routes at connect time is the host's own network namespace, and a rule
there would mean editing the operator's firewall. The price is a window: between the kernel
adding a route and the filter of a sandbox that is already running learning of it, that
sandbox could still open a connection to the new address. It is one nft run per live
sandbox (on two cores: ~10 ms with one sandbox, ~50 ms with ten, ~270 ms with fifty), and
the rules are stateless, so such a connection is cut at its next packet once the element
is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
from collections.abc import Callable, Iterable

from tci.errors import SandboxUnavailable
from tci.sandbox import host_routes
from tci.sandbox.host_routes import LostTrack, Network, RouteFollower

log = logging.getLogger(__name__)

# slirp4netns answers DNS here; it is inside 10.0.0.0/8, so it is allowed first.
SLIRP_DNS = "10.0.2.3"

# Ranges that are local to a host or its site by definition (RFC 6890 and friends).
REFUSED_V4 = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # private (RFC 1918)
    "100.64.0.0/10",  # shared address space: carrier-grade NAT, VPN overlays, cloud services
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, where most clouds serve instance metadata
    "192.0.0.0/24",  # IETF protocol assignments
    "198.18.0.0/15",  # benchmarking of network devices
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and the limited broadcast address
)
REFUSED_V6 = (
    "::/128", "::1/128",  # unspecified, loopback
    "::ffff:0:0/96",  # IPv4-mapped: would carry any IPv4 destination past the IPv4 rules
    "64:ff9b::/96",  # NAT64, which embeds IPv4 addresses likewise
    "100::/64",  # discard-only
    "fc00::/7",  # unique local (the IPv6 private range)
    "fe80::/10",  # link-local
    "ff00::/8",  # multicast
)

# Instance metadata services hand out the host's cloud credentials to whoever asks. Most live
# in ranges refused above; they are listed by name anyway, so that none is lost if a range
# is ever narrowed, and the public ones are refused only because they are listed here.
METADATA_ENDPOINTS = (
    "169.254.169.254",  # AWS, GCP (metadata.google.internal), Azure, OCI, OpenStack, DO, ...
    "169.254.170.2",  # AWS ECS task metadata and credentials
    "169.254.170.23",  # AWS EKS Pod Identity agent
    "169.254.42.42",  # Scaleway
    "100.100.100.200",  # Alibaba Cloud (in the shared range 100.64.0.0/10)
    "192.0.0.192",  # Oracle Cloud Classic (in the IETF range 192.0.0.0/24)
    "168.63.129.16",  # Azure WireServer: a public address, served to every Azure VM
    "fd00:ec2::254",  # AWS, IPv6
    "fd00:ec2::23",  # AWS EKS Pod Identity agent, IPv6
    "fd20:ce::254",  # GCP, IPv6
    "fd00:c1::a9fe:a9fe",  # Oracle Cloud, IPv6
    "fd00:42::42",  # Scaleway, IPv6
)

_TABLE = "inet tci_egress"
_SETS = {4: "refused_v4", 6: "refused_v6"}


def fixed_refusals(extra: Iterable[str] = ()) -> set[Network]:
    """The refusals that do not depend on the host: ranges, metadata endpoints, the operator's
    list. Raises ValueError for an entry that is not an address or a network."""
    entries = [*REFUSED_V4, *REFUSED_V6, *METADATA_ENDPOINTS, *extra]
    return {ipaddress.ip_network(entry.strip(), strict=False) for entry in entries}


def _elements(networks: Iterable[Network]) -> dict[int, list[str]]:
    """Per IP version, the networks collapsed (an interval set refuses overlapping elements)."""
    every = list(networks)
    by_version: dict[int, list[str]] = {4: [], 6: []}
    for version in by_version:
        chosen = [network for network in every if network.version == version]
        # One IP version only, as collapse_addresses needs; mypy sees the list's mixed type.
        by_version[version] = [str(n) for n in ipaddress.collapse_addresses(chosen)]  # type: ignore[type-var]
    return by_version


def _covered(network: Network, refused: set[Network]) -> bool:
    return any(network.version == r.version and network.subnet_of(r)  # type: ignore[arg-type]
               for r in refused)


def ruleset(refused: Iterable[Network]) -> str:
    elements = _elements(refused)

    def refused_set(version: int) -> str:
        kind = "ipv4_addr" if version == 4 else "ipv6_addr"
        listed = f"elements = {{ {', '.join(elements[version])} }}" if elements[version] else ""
        return f"set {_SETS[version]} {{ type {kind}; flags interval; auto-merge; {listed} }}"

    return f"""
table {_TABLE} {{
  {refused_set(4)}
  {refused_set(6)}
  chain output {{
    type filter hook output priority 0; policy accept;
    oifname "lo" accept
    ip daddr {SLIRP_DNS} meta l4proto {{ tcp, udp }} th dport 53 accept
    ip daddr @{_SETS[4]} reject with icmpx type admin-prohibited
    ip6 daddr @{_SETS[6]} reject with icmpx type admin-prohibited
  }}
}}
"""


def additions(networks: Iterable[Network]) -> str:
    elements = _elements(networks)
    return "".join(
        f"add element {_TABLE} {_SETS[version]} {{ {', '.join(listed)} }}\n"
        for version, listed in elements.items() if listed
    )


class FilteredNamespace:
    """A sandbox's network namespace, held open by a file descriptor from the moment its
    filter is loaded until its network is torn down: later updates and slirp4netns reach it
    through the descriptor, never through a pid that could by then name another process."""

    def __init__(self, owner: EgressFilter, fd: int) -> None:
        self.owner = owner
        self.fd = fd
        self.lock = asyncio.Lock()  # one nft run at a time in this namespace
        self.closed = False
        # Called when an update could not be applied: the sandbox must then lose its network.
        self.on_failure: list[Callable[[], None]] = []

    @property
    def path(self) -> str:
        """The namespace, for a child process that inherits `fd` (pass_fds)."""
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.owner.detach(self)
            os.close(self.fd)


class EgressFilter:
    """One per server: the refusals, the live sandboxes' namespaces, and the route follower
    that keeps them current. The follower runs only while some sandbox has a network."""

    def __init__(self, extra_refused: Iterable[str] = ()) -> None:
        self.nft = shutil.which("nft")
        self.nsenter = shutil.which("nsenter")
        try:
            self.fixed = fixed_refusals(extra_refused)
        except ValueError as exc:
            raise SandboxUnavailable(f"TCI_EGRESS_REFUSE: {exc}") from exc
        self.host: set[Network] = set()  # what the host delivers to itself (routes)
        self.live: set[FilteredNamespace] = set()
        self.follower: RouteFollower | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.updates: set[asyncio.Task[None]] = set()

    def _require_tools(self) -> None:
        if self.nft is None or self.nsenter is None:
            raise SandboxUnavailable(
                "TCI_NETWORK=egress needs nftables and nsenter (apt-get install nftables "
                "util-linux) to keep sandboxes away from the host and its networks"
            )

    def check(self) -> None:
        """At server start: the tools are there and the host's routes can be read."""
        self._require_tools()
        try:
            host_routes.dump()
        except OSError as exc:
            raise SandboxUnavailable(
                f"TCI_NETWORK=egress needs to read the host's routes (rtnetlink): {exc}"
            ) from exc

    def refused(self) -> set[Network]:
        return self.fixed | self.host

    async def attach(self, pid: int) -> FilteredNamespace:
        """Load the rules into the network namespace of `pid`, before any traffic can flow
        (slirp4netns is started after this). Close the result to stop following it."""
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SandboxUnavailable(f"the sandbox's network namespace is gone: {exc}") from exc
        return await self.attach_fd(fd)

    async def attach_fd(self, fd: int) -> FilteredNamespace:
        """As attach, for a namespace held by `fd` (which the result then owns)."""
        self._require_tools()
        if os.fstat(fd).st_ino == os.stat("/proc/self/ns/net").st_ino:
            os.close(fd)
            raise SandboxUnavailable("the sandbox did not get a network namespace of its own")
        namespace = FilteredNamespace(self, fd)
        try:
            self._follow()
            # Routes announced before now are in the first ruleset, not in a later update.
            self._read_announcements()
            self.live.add(namespace)
            async with namespace.lock:
                await self._nft(namespace, ruleset(self.refused()))
        except BaseException:
            namespace.close()
            raise
        return namespace

    def detach(self, namespace: FilteredNamespace) -> None:
        self.live.discard(namespace)
        if not self.live and self.follower is not None:
            if self.loop is not None and not self.loop.is_closed():
                self.loop.remove_reader(self.follower.fileno())
            self.follower.close()
            self.follower = None

    def _follow(self) -> None:
        if self.follower is not None:
            return
        try:
            follower = RouteFollower()  # subscribe first, then read: nothing falls between
            self.host = host_routes.dump()
        except OSError as exc:
            raise SandboxUnavailable(f"could not follow the host's routes: {exc}") from exc
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(follower.fileno(), self._read_announcements)
        self.follower = follower

    def _read_announcements(self) -> None:
        if self.follower is None:
            return
        try:
            announced = self.follower.read()
        except LostTrack:
            log.warning("missed route announcements (buffer overflow): reading all routes again")
            announced = host_routes.dump()
        except OSError as exc:
            log.error("could not read route announcements: %s", exc)
            return
        refused = self.refused()
        new = {network for network in announced if not _covered(network, refused)}
        if not new:
            return
        self.host |= new
        log.info("refusing newly local destinations in live sandboxes: %s",
                 ", ".join(sorted(map(str, new))))
        for namespace in list(self.live):
            task = asyncio.ensure_future(self._extend(namespace, new))
            self.updates.add(task)
            task.add_done_callback(self.updates.discard)

    async def _extend(self, namespace: FilteredNamespace, new: set[Network]) -> None:
        async with namespace.lock:
            if namespace.closed:
                return
            try:
                await self._nft(namespace, additions(new))
            except SandboxUnavailable as exc:
                if namespace.closed:
                    return
                # Fail closed: a sandbox whose filter may miss a host address loses its network.
                log.error("cutting a sandbox's network: %s", exc.message)
                for cut in namespace.on_failure:
                    with contextlib.suppress(Exception):
                        cut()

    async def _nft(self, namespace: FilteredNamespace, script: str) -> None:
        assert self.nsenter is not None and self.nft is not None
        process = await asyncio.create_subprocess_exec(
            self.nsenter, f"--net={namespace.path}", "--", self.nft, "-f", "-",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, pass_fds=(namespace.fd,),
        )
        _, stderr = await process.communicate(script.encode())
        if process.returncode != 0:
            raise SandboxUnavailable(
                f"could not install the sandbox's egress filter: {stderr.decode().strip()}"
            )
