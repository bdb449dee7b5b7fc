"""What an `egress` sandbox may reach: the public internet, not the host or its neighbourhood.

Sessions get the internet so that `!pip install`, `git clone` and API calls work. slirp4netns
makes those connections from the host on the sandbox's behalf, so without a filter a sandbox
could reach anything the host can: the host's own services (a server bound to 0.0.0.0
answers on every address the host holds), its private networks and its cloud's metadata
service (instance credentials). An nftables table inside the sandbox's network namespace
rejects those destinations before slirp4netns sees them. The namespace is owned by the
host's user namespace and the sandbox holds no capability over it, so its code cannot
change these rules.

What is refused, in two tiers. Never, whatever the operator allows:
- the host itself: whatever it delivers to itself, by route (host_routes.py), followed live:
  a route added while sessions run reaches every live sandbox's filter (`nft add element`),
  and a sandbox started later has it before its network exists; and loopback, link-local,
  multicast and the IPv6 prefixes that embed IPv4 addresses (NEVER_V4, NEVER_V6);
- the cloud metadata endpoints, some of which sit in public ranges (METADATA_ENDPOINTS);
- the cluster's own machines, in whatever range: every node of the Ray cluster (fed by the
  host actor as nodes join, `refuse_cluster`) and the database's host (TCI_DATABASE_URL).
Refused unless TCI_EGRESS_ALLOW names them (accepted before these rules):
- ranges that are by definition local to a site (REFUSED_V4, REFUSED_V6);
- the host's neighbours: every prefix it reaches on-link (an address's subnet, a route
  without gateway), followed live like its own routes: on a LAN of public addresses they
  are the other hosts, their databases and servers;
- the operator's own additions (TCI_EGRESS_REFUSE).
Everything else counts as the internet, including ranges reserved for documentation: no
host or site holds them as a private network, and some networks route them to ordinary
services (package indexes, proxies) that sessions must reach.

DNS goes only to the resolvers TCI_EGRESS_DNS names (unset: the host's own, read once at
start and stated in the log), and only to their port 53, whatever tier they are in:
slirp4netns's built-in forwarder (10.0.2.3, which asks whatever the host's resolv.conf says
at the time) is turned off, and the sandbox's resolv.conf names them.

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
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tci.errors import SandboxUnavailable
from tci.sandbox import host_routes, spawn
from tci.sandbox.host_routes import HostNetworks, LostTrack, Network, RouteFollower

log = logging.getLogger(__name__)

# Ranges that are the host itself, or no destination at all: never allowed.
NEVER_V4 = (
    "0.0.0.0/8",  # "this network"
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, where most clouds serve instance metadata
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and the limited broadcast address
)
NEVER_V6 = (
    "::/128", "::1/128",  # unspecified, loopback
    "::ffff:0:0/96",  # IPv4-mapped: would carry any IPv4 destination past the IPv4 rules
    "64:ff9b::/96",  # NAT64, which embeds IPv4 addresses likewise
    "fe80::/10",  # link-local
    "ff00::/8",  # multicast
)
# Ranges that are local to a site by definition (RFC 6890 and friends): refused unless the
# operator allows them (an internal package mirror, say).
REFUSED_V4 = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # private (RFC 1918)
    "100.64.0.0/10",  # shared address space: carrier-grade NAT, VPN overlays, cloud services
    "192.0.0.0/24",  # IETF protocol assignments
    "198.18.0.0/15",  # benchmarking of network devices
)
REFUSED_V6 = (
    "100::/64",  # discard-only
    "fc00::/7",  # unique local (the IPv6 private range)
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

_T = TypeVar("_T")
_TABLE = "inet tci_egress"
# The three sets, by tier: never (checked first), allowed (accepted next), refused.
NEVER, ALLOWED, REFUSED = "never", "allowed", "refused"
_SYSTEM_RESOLV_CONF = Path("/etc/resolv.conf")
# systemd-resolved's list of the upstream servers behind its stub on 127.0.0.53.
_RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")
_POSTGRES_PORT = 5432


def networks(entries: Iterable[str]) -> set[Network]:
    """Raises ValueError for an entry that is not an address or a network."""
    return {ipaddress.ip_network(entry.strip(), strict=False) for entry in entries}


def fixed_never() -> set[Network]:
    """What is never allowed and does not depend on the host: its loopback, link-local and
    such ranges, and the metadata endpoints."""
    return networks([*NEVER_V4, *NEVER_V6, *METADATA_ENDPOINTS])


def fixed_refusals(extra: Iterable[str] = ()) -> set[Network]:
    """Everything refused that does not depend on the host: both tiers' ranges, metadata
    endpoints, the operator's list. Raises ValueError for a bad entry."""
    return fixed_never() | networks([*REFUSED_V4, *REFUSED_V6, *extra])


def _nameservers(path: Path) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [words[1] for words in map(str.split, lines)
            if len(words) >= 2 and words[0] == "nameserver"]


def host_resolvers() -> list[str]:
    """The host's resolvers, as the sandbox can reach them: IPv4 (slirp4netns gives sessions
    no IPv6) and not on the host's loopback, where a sandbox has its own. A local stub
    (systemd-resolved) is replaced by the upstream servers it lists."""
    found = _nameservers(_SYSTEM_RESOLV_CONF)
    if any(ipaddress.ip_address(entry.split("%")[0]).is_loopback
           for entry in found if _is_address(entry)):
        found += _nameservers(_RESOLVED_UPSTREAM)
    usable = []
    for entry in found:
        if _is_address(entry):
            address = ipaddress.ip_address(entry)
            if address.version == 4 and not address.is_loopback and entry not in usable:
                usable.append(entry)
    return usable


def _is_address(entry: str) -> bool:
    try:
        ipaddress.ip_address(entry)
    except ValueError:
        return False
    return True


def resolvers(named: list[str] | None) -> list[str]:
    """The sessions' DNS servers: the ones named, else (None) the host's. Raises ValueError
    for a name that is not an IPv4 address outside loopback."""
    if named is None:
        return host_resolvers()
    chosen = []
    for entry in named:
        address = ipaddress.ip_address(entry.strip())
        if address.version != 4 or address.is_loopback or address.is_unspecified:
            raise ValueError(f"{entry!r}: a session reaches only IPv4 resolvers off the "
                             "host's loopback")
        chosen.append(str(address))
    return chosen


def database_networks(url: str) -> set[Network]:
    """The addresses of the database's host, for a database reached over the network
    (PostgreSQL by TCP; SQLite and UNIX sockets have none). Raises ValueError if the URL
    is malformed and OSError if its host does not resolve."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"not a database URL: {exc}") from exc
    if not parsed.get_backend_name().startswith("postgresql"):
        return set()
    hosts = [parsed.host] if parsed.host else []
    extra = parsed.query.get("host")  # libpq's ?host=..., possibly a list of hosts
    for entry in (extra,) if isinstance(extra, str) else (extra or ()):
        hosts += entry.split(",")
    found: set[Network] = set()
    for host in hosts:
        if host and not host.startswith("/"):  # a directory: a UNIX socket
            for *_, address in socket.getaddrinfo(host, parsed.port or _POSTGRES_PORT,
                                                  type=socket.SOCK_STREAM):
                found.add(ipaddress.ip_network(str(address[0]).split("%")[0]))
    return found


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


def _set_name(tier: str, version: int) -> str:
    return f"{tier}_v{version}"


def ruleset(never: Iterable[Network], refused: Iterable[Network],
            allowed: Iterable[Network] = (), dns: Iterable[str] = ()) -> str:
    tiers = {NEVER: _elements(never), ALLOWED: _elements(allowed), REFUSED: _elements(refused)}

    def declare(tier: str, version: int) -> str:
        kind = "ipv4_addr" if version == 4 else "ipv6_addr"
        elements = tiers[tier][version]
        listed = f"elements = {{ {', '.join(elements)} }}" if elements else ""
        return (f"set {_set_name(tier, version)} {{ type {kind}; flags interval; auto-merge; "
                f"{listed} }}")

    def match(tier: str, verdict: str) -> str:
        return (f"ip daddr @{_set_name(tier, 4)} {verdict}\n"
                f"    ip6 daddr @{_set_name(tier, 6)} {verdict}")

    servers = ", ".join(dns)
    # Port 53 of the named resolvers only, before everything: they may sit in a refused range.
    dns_rule = (f"ip daddr {{ {servers} }} meta l4proto {{ tcp, udp }} th dport 53 accept"
                if servers else "")
    sets = "\n  ".join(declare(tier, version) for tier in tiers for version in (4, 6))
    reject = "reject with icmpx type admin-prohibited"
    return f"""
table {_TABLE} {{
  {sets}
  chain output {{
    type filter hook output priority 0; policy accept;
    oifname "lo" accept
    {dns_rule}
    {match(NEVER, reject)}
    {match(ALLOWED, "accept")}
    {match(REFUSED, reject)}
  }}
}}
"""


def additions(networks: Iterable[Network], tier: str = NEVER) -> str:
    elements = _elements(networks)
    return "".join(
        f"add element {_TABLE} {_set_name(tier, version)} {{ {', '.join(listed)} }}\n"
        for version, listed in elements.items() if listed
    )


def _setting(name: str, parse: Callable[[], _T]) -> _T:
    try:
        return parse()
    except ValueError as exc:
        raise SandboxUnavailable(f"{name}: {exc}") from exc


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

    def __init__(self, extra_refused: Iterable[str] = (), *, allowed: Iterable[str] = (),
                 dns: list[str] | None = None, database_url: str = "") -> None:
        self.nft = shutil.which("nft")
        self.nsenter = shutil.which("nsenter")
        self.fixed_never = fixed_never()
        self.fixed = _setting("TCI_EGRESS_REFUSE",
                              lambda: networks([*REFUSED_V4, *REFUSED_V6, *extra_refused]))
        self.allowed = _setting("TCI_EGRESS_ALLOW", lambda: networks(allowed))
        self.dns = _setting("TCI_EGRESS_DNS", lambda: resolvers(dns))
        self.database_url = database_url
        self.host = HostNetworks()  # what the host delivers to itself, and its neighbours
        # The cluster's machines: the database's host (at check()), the Ray nodes (fed).
        self.cluster: set[Network] = set()
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
        """At server start: the tools are there, the host's routes can be read, the
        database's host is known."""
        self._require_tools()
        try:
            host_routes.dump()
        except OSError as exc:
            raise SandboxUnavailable(
                f"TCI_NETWORK=egress needs to read the host's routes (rtnetlink): {exc}"
            ) from exc
        try:
            self.cluster |= database_networks(self.database_url)
        except (OSError, ValueError) as exc:
            raise SandboxUnavailable(
                f"TCI_NETWORK=egress refuses the database's host, which could not be found "
                f"(TCI_DATABASE_URL): {exc}") from exc
        log.info("sessions' DNS goes to %s (TCI_EGRESS_DNS)",
                 ", ".join(self.dns) or "no resolver: sessions cannot resolve names")
        if self.cluster:
            log.info("sessions never reach the database's host: %s",
                     ", ".join(sorted(map(str, self.cluster))))

    def never(self) -> set[Network]:
        return self.fixed_never | self.host.local | self.cluster

    def refused(self) -> set[Network]:
        """Everything refused, whichever tier (what `_covered` checks a new route against)."""
        return self.never() | self.fixed | self.host.onlink

    def ruleset(self) -> str:
        return ruleset(self.never(), self.fixed | self.host.onlink, self.allowed, self.dns)

    def refuse_cluster(self, addresses: Iterable[str]) -> None:
        """The cluster's machines, as they become known (the Ray nodes): never reached, by
        live sandboxes from now on (an nft run each) and by every later one."""
        found: set[Network] = set()
        for address in addresses:
            try:
                found.add(ipaddress.ip_network(address.strip()))
            except ValueError:
                log.warning("not refusing a cluster node of unknown address %r", address)
        new = {network for network in found if not _covered(network, self.never())}
        if not new:
            return
        self.cluster |= new
        log.info("refusing the cluster's machines in sandboxes: %s",
                 ", ".join(sorted(map(str, new))))
        self._extend_live(additions(new, NEVER))

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
                await self._nft(namespace, self.ruleset())
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
        never, refused = self.never(), self.refused()
        local = {network for network in announced.local if not _covered(network, never)}
        onlink = {network for network in announced.onlink if not _covered(network, refused)}
        if not local and not onlink:
            return
        self.host.update(HostNetworks(local, onlink))
        log.info("refusing newly local or on-link destinations in live sandboxes: %s",
                 ", ".join(sorted(map(str, local | onlink))))
        self._extend_live(additions(local, NEVER) + additions(onlink, REFUSED))

    def _extend_live(self, script: str) -> None:
        for namespace in list(self.live):
            task = asyncio.ensure_future(self._extend(namespace, script))
            self.updates.add(task)
            task.add_done_callback(self.updates.discard)

    async def _extend(self, namespace: FilteredNamespace, script: str) -> None:
        async with namespace.lock:
            if namespace.closed:
                return
            try:
                await self._nft(namespace, script)
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
        process = await spawn.start(
            [self.nsenter, f"--net={namespace.path}", "--", self.nft, "-f", "-"],
            stdin=spawn.PIPE, stderr=spawn.PIPE, pass_fds=(namespace.fd,))
        _, stderr = await process.communicate(script.encode())
        if process.returncode != 0:
            raise SandboxUnavailable(
                f"could not install the sandbox's egress filter: {stderr.decode().strip()}"
            )


class ClusterFeed:
    """Keeps the filter refusing every machine of the cluster: reads the node addresses
    (`read_nodes`, blocking, e.g. Ray's `ray.nodes`: dicts with NodeManagerAddress) every
    `period` seconds, so that a node that joins is refused within a period. A node once seen
    stays refused (a dead node may come back, under the same address)."""

    def __init__(self, egress_filter: EgressFilter,
                 read_nodes: Callable[[], list[dict[str, object]]], period: float) -> None:
        self.egress_filter = egress_filter
        self.read_nodes = read_nodes
        self.period = period
        self.task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        nodes = await asyncio.to_thread(self.read_nodes)
        self.egress_filter.refuse_cluster(
            str(node["NodeManagerAddress"]) for node in nodes if node.get("NodeManagerAddress"))

    async def start(self) -> None:
        """The first read now (a failure raises: no sandbox may start unaware of the cluster),
        then one every period."""
        try:
            await self.refresh()
        except Exception as exc:
            raise SandboxUnavailable(f"could not read the cluster's nodes: {exc}") from exc
        self.task = asyncio.create_task(self._refresh_forever(), name="tci-cluster-feed")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.refresh()
            except Exception as exc:  # Ray busy or restarting: the next period tries again
                log.warning("could not read the cluster's nodes: %s", exc)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
