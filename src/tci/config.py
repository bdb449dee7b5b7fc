"""One typed settings object, read once from the environment (prefix TCI_) and passed down."""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
_REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_data_dir() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "tci"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TCI_", extra="ignore")

    # Where things live.
    data_dir: Path = Field(default_factory=_default_data_dir)
    sandbox_dir: Path | None = None  # default: /var/tmp/tci/<hash of data_dir>, see below
    runtime_dir: Path = _REPO_ROOT / ".runtime"
    host: str = "127.0.0.1"
    port: int = 8000
    # How long `tci serve`, told to stop (SIGTERM, Ctrl-C), lets requests in flight finish
    # before it cancels them and ends the sessions. Whole seconds: uvicorn's unit.
    shutdown_grace_seconds: int = Field(default=10, ge=0)

    # Sessions.
    session_lifetime_seconds: float = 3600.0
    execute_timeout: float = 120.0
    interrupt_grace_seconds: float = 2.0
    worker_start_timeout: float = 60.0
    # Sessions at once (warm ones excluded). Unset: what this machine holds, from its memory,
    # uids and loop devices (hosts/capacity.py); a value it cannot honour is refused at start.
    max_sessions: int | None = None
    reap_interval_seconds: float = 5.0
    pool_size: int = 4
    pool_preload: list[str] = ["numpy", "pandas", "matplotlib.pyplot"]
    store_flush_seconds: float = 0.5
    # Session host and warm pool (hosts/). A refill starts this long after a take, so the new
    # session's first call has the CPU, and runs at this niceness (0..19): on two cores an
    # interpreter start plus imports must not slow live calls. After a failed warm start the
    # pool waits pool_retry_seconds before it tries again.
    pool_refill_delay_seconds: float = Field(default=0.05, ge=0)
    pool_refill_niceness: int = Field(default=10, ge=0, le=19)
    pool_retry_seconds: float = Field(default=5.0, ge=0)
    # Recently ended sessions whose end reason is answered from memory; older ones are looked
    # up in the store (same answer, one query).
    remember_ended_sessions: int = Field(default=10_000, ge=0)
    # Pause, resume and snapshots (sessions/pause.py). Kept volume images live in state_dir
    # (default: <data_dir>/state; on a Ray cluster one shared directory every host node
    # mounts, NFS or a shared volume, so a state resumes on any host). A saved
    # namespace larger than max_state_bytes is refused with a clear error. A paused session
    # is kept paused_retention_seconds, then ended; one idle for idle_pause_seconds pauses by
    # itself (None: never). Snapshots are kept until deleted.
    state_dir: Path | None = None
    max_state_bytes: int = Field(default=512 * MiB, ge=1)
    paused_retention_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    idle_pause_seconds: float | None = Field(default=None, gt=0)
    # After a start from a snapshot, this many more sessions restored from it are kept ready
    # (hosts/snapshot_copies.py), for that many recently started snapshots at once (0: none).
    snapshot_pool_size: int = Field(default=2, ge=0)
    snapshot_pool_snapshots: int = Field(default=2, ge=0)
    # A paused session or snapshot whose kept volume takes at most this resumes in a warm
    # pool sandbox, its files copied in (no cold start); a larger one starts a sandbox on the
    # kept volume itself (0: always that).
    resume_copy_max_bytes: int = Field(default=64 * MiB, ge=0)
    # A streamed call that has printed nothing for this long sends a comment line, so proxies
    # and clients do not drop a quiet connection.
    stream_keepalive_seconds: float = Field(default=15.0, gt=0)

    # Sandbox.
    # Serve even when the start-up self-check finds a protection missing (no cgroups, no
    # seccomp...). Named for the danger: only for development on a host that lacks them.
    unsafe_allow_missing_protections: bool = False
    network: Literal["none", "egress"] = "egress"
    # How a session's sandbox starts: "fork" of a template that imported the runtime once
    # (milliseconds, pages shared), or "bwrap", a new interpreter in bubblewrap (about a
    # second of CPU each, hidden by the warm pool until it drains). Same confinement.
    sandbox_start: Literal["fork", "bwrap"] = "fork"
    # Fork path with egress: networks (namespace, filter, slirp4netns) made ahead of demand.
    network_pool_size: int = 4
    # Warm sessions the pool starts at once when it refills: a fork costs milliseconds, so
    # several keep up with clients; a bubblewrap start costs a second of CPU, so one does.
    pool_refill_concurrency: int = 4
    # Egress: destinations refused besides the built-in ones (addresses or CIDR networks,
    # JSON list), e.g. neighbours on public addresses that trust the host's network.
    egress_refuse: list[str] = []
    # Egress: exceptions to the refusals (addresses or CIDR networks, JSON list), e.g. an
    # internal package mirror or the on-link LAN. Never opens the host itself, cloud metadata,
    # the Ray cluster's nodes or the database's host.
    egress_allow: list[str] = []
    # Egress: the only DNS servers sessions may ask (IPv4 addresses, JSON list; [] for none).
    # Unset: the host's resolvers, read once at start (a local stub's upstreams) and logged.
    egress_dns: list[str] | None = None
    sandbox_uid_base: int = 200_000
    sandbox_uid_count: int = 10_000

    # Per-session limits, enforced by the kernel (see docs/security.md).
    memory_limit_bytes: int = 2048 * MiB
    pids_limit: int = 256
    # Tasks (pids) kept for the host: all sessions together may hold the kernel's pid_max (or
    # threads-max, if lower) less this, so the server, sshd and the database can still fork
    # when every session is at its TCI_PIDS_LIMIT. A typical server runs a few hundred tasks.
    host_pids_reserve: int = Field(default=4096, ge=0)
    cpu_weight: int = 100  # relative CPU share; 100 = an equal share with other sessions
    workspace_max_bytes: int = 1024 * MiB
    workspace_max_files: int = 20_000
    tmp_max_bytes: int = 256 * MiB  # each of /tmp and /dev/shm (RAM, counted in memory)
    open_files_limit: int = 1024

    # Sizes.
    max_request_bytes: int = 160 * MiB
    max_file_bytes: int = 50 * MiB
    max_files_bytes: int = 100 * MiB
    max_files_per_request: int = 1000
    max_filename_length: int = 1024
    max_files_listed: int = 10_000
    # Directory entries (files, directories, links...) one listing examines: bounds its work
    # even in a tree of empty directories or of hard links, which no inode cap bounds.
    max_files_scanned: int = 100_000
    max_code_bytes: int = 4 * MiB
    max_output_bytes: int = 8 * MiB  # bytes of JSON sent for a call's outputs, streamed or not
    # JSON values (numbers, strings, lists...) the server may build from one call's JSON-typed
    # outputs (application/json, Plotly figures): parsing is what costs time and memory, so it
    # is bounded before parsing. 1,000,000 is a Plotly figure of ~500k points.
    max_output_json_values: int = 1_000_000
    # Streamed output goes out in whole lines; a partial line waits at most this long.
    stream_partial_line_seconds: float = 0.05

    # Auth.
    auth_cache_seconds: float = 10.0

    # Unauthenticated and greedy clients (docs/security.md).
    # Each of the two key caches (keys known valid, keys known unknown) holds at most this many
    # keys, evicting the oldest: a flood of random keys cannot push out the valid ones.
    auth_cache_entries: int = 10_000
    # Database look-ups at once for keys not known to be valid; beyond it such requests get 503
    # at once, so a flood of random keys cannot queue work ahead of everyone's store calls.
    auth_max_lookups: int = 8
    # Requests without an API key (/health, the console, an open /metrics) take no body: they
    # are refused (413) past this many bytes, before the rest is read.
    max_anonymous_request_bytes: int = 4096
    # Sessions one API key may hold at once. Unset: TCI_MAX_SESSIONS, no extra limit (a server
    # often has one key, whose capacity a lower cap would only cut); set it when several
    # tenants share a server, so that one of them cannot take every slot.
    max_sessions_per_key: int | None = None
    # New sessions are refused (503) while the sandbox directory's filesystem has less free
    # space than this: by default room for one more workspace of the default 1 GiB, and for the
    # store and logs when they share the disk.
    min_free_disk_bytes: int = 1024 * MiB
    # Disk I/O share of each session when the disk is contended, in cgroup v2 io.weight units
    # (100 = an equal share; 1..10000, v1's blkio.bfq.weight stops at 1000). The kernel applies
    # it only on devices scheduled by bfq (or io.cost on v2); elsewhere it is recorded, unused.
    io_weight: int = 100
    # Keep the kernel's cgroup lock in its writer-friendly mode while the server runs (a
    # cgroup hierarchy of its own mounted with favordynmods, sandbox/cgroup_dynmods.py): a
    # session joining its cgroup then waits for no RCU grace period (~6-12 ms each, serialized
    # between concurrent creations); every fork and exit on the machine pays an atomic op more.
    cgroup_favordynmods: bool = True
    # A session's runtime for another language (node, bash, R: worker/kernels/) must be up
    # within this many seconds of a call asking for it, else the call gets an error and the
    # session lives on. A busy 2-core machine starts R in about 1 s.
    runtime_start_timeout_seconds: float = Field(default=60.0, gt=0)
    # Host header values /mcp accepts (DNS rebinding): "name" (any port), "name:port", or "*"
    # for any. Unset: the bind host, localhost, 127.0.0.1 and [::1]. Set it to the names
    # clients use when the server is reached by another name (a bind to 0.0.0.0, a proxy).
    allowed_hosts: list[str] | None = None

    # One-shot runs (POST /v1/tci/batch, /sandboxfusion): each a program in a fresh sandbox.
    # Time and memory of a run when its request names none, and the most it may name.
    run_default_timeout: float = Field(default=10.0, gt=0)
    run_max_timeout: float = Field(default=300.0, gt=0)
    run_default_memory_bytes: int = Field(default=1024 * MiB, ge=16 * MiB)
    # Bytes of stdout, and of stderr, kept of one run; the rest is read and dropped
    # (`truncated`), so a program that prints forever costs no memory.
    run_max_output_bytes: int = Field(default=8 * MiB, ge=1)
    # A run's /workspace is a tmpfs of this size (its files and what it writes; RAM, counted
    # in the run's memory limit).
    run_workspace_max_bytes: int = Field(default=256 * MiB, ge=1 * MiB)
    # Bytes of the files a run asks back (fetch_files) in all; a file past it is left out.
    run_fetch_max_bytes: int = Field(default=16 * MiB, ge=0)
    # Runs executing at once (unset: twice the CPUs), and runs that may wait for a slot
    # beyond those; past that, the batch endpoint answers 429 and SandboxFusion's 504.
    run_concurrency: int | None = Field(default=None, ge=1)
    run_queue_size: int = Field(default=4096, ge=0)
    # Runs are scored: by default they reach no network (no answers fetched, no flaky
    # downloads); "egress" gives them the sessions' filtered internet.
    run_network: Literal["none", "egress"] = "none"
    batch_max_runs: int = Field(default=1000, ge=1)
    # Seconds a compiled language's compile may take when the run names no compile_timeout
    # (its own limit, apart from the run's; the most a run may name is run_max_timeout).
    run_compile_timeout: float = Field(default=10.0, gt=0)
    # Bytes of compiled programs kept in memory, by what they were compiled from (language,
    # code, files): runs of the same code (a batch's test cases) compile once. 0: never kept.
    run_compile_cache_bytes: int = Field(default=256 * MiB, ge=0)
    # What runs' template imports once, so a run's `import` of it is instant: numpy and the
    # standard modules scoring code and its wrappers (verl's...) import. Each module makes
    # every run's fork and exit dearer (the sessions' list, pandas and matplotlib with it,
    # about triples it); anything else imports on demand at its usual cost.
    run_preload: list[str] = [
        "numpy", "collections", "itertools", "functools", "heapq", "bisect", "math", "re",
        "string", "json", "datetime", "copy", "random", "statistics", "operator", "typing",
        "decimal", "fractions", "io", "traceback"]
    # SandboxFusion's clients (verl...) send no key: such requests count as this API key's
    # (a key name; one that does not exist stops the server at start), and only from peers
    # in sandboxfusion_allow. Unset: /sandboxfusion needs a Bearer key like the rest.
    sandboxfusion_key: str = ""
    sandboxfusion_allow: list[str] = ["127.0.0.0/8", "::1/128"]

    # Usage, metrics, logs.
    price_per_session_usd: float = 0.03  # cost = sessions started x this price
    # ... + one-shot runs (batch, /sandboxfusion) x this price.
    price_per_run_usd: float = Field(default=0.0, ge=0)
    # GET /tci/usage?bucket=: at most this many buckets in one answer (1000 hours is ~41 days),
    # so one request cannot make the server build an arbitrarily long series.
    usage_max_buckets: int = 1000
    # /metrics is open by default (counts only, for a Prometheus scraper on the same host);
    # set true when the port is reachable by others: then it needs a Bearer key.
    metrics_require_key: bool = False
    log_format: Literal["text", "json"] = "text"

    # Storage: keys, sessions, executions and usage. An SQLAlchemy URL, e.g.
    # postgresql+psycopg://user@127.0.0.1:5432/tci (the schema is migrated when a server or a
    # `tci` command opens it). Unset: the SQLite file <TCI_DATA_DIR>/tci.db.
    database_url: str = ""
    # Seconds a call waits for the database (PostgreSQL: to connect; SQLite: for another
    # writer's lock) before it gives up and the request gets 503.
    database_timeout_seconds: float = 5.0

    # Ray cluster (tci/cluster, docs/deploy.md). On a gateway: the Ray head's HEAD:PORT; the
    # gateway then places sessions on the cluster's tci_host nodes instead of this machine.
    # Unset: a single machine, and Ray is never imported.
    ray_address: str = ""
    ray_namespace: str = "tci"  # where host actors are named (tci-host-<node id>)
    # How often a gateway looks for tci_host nodes that joined (and starts their host actor).
    ray_discover_seconds: float = Field(default=5.0, gt=0)
    # A host actor answers a gateway's "which sessions ended?" call at least this often, with
    # its free capacity: placement uses numbers at most this old.
    ray_feed_seconds: float = Field(default=1.0, gt=0)
    # Ended sessions a host actor remembers for gateways that ask late (oldest dropped).
    ray_ended_feed_entries: int = Field(default=10_000, ge=1)
    # Seconds a gateway waits for a new host actor to start (its self-check and warm pool).
    ray_host_start_timeout: float = Field(default=120.0, gt=0)
    # How often a host actor reads the cluster's nodes, whose addresses its egress sandboxes
    # never reach: a node that joins is refused within this many seconds.
    ray_nodes_refresh_seconds: float = Field(default=5.0, gt=0)

    @field_validator("max_sessions", "max_sessions_per_key", "idle_pause_seconds", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # TCI_MAX_SESSIONS= : what the machine holds

    @model_validator(mode="after")
    def _default_database_url(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'tci.db'}"
        return self

    @property
    def resolved_state_dir(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.data_dir / "state"

    @cached_property
    def resolved_sandbox_dir(self) -> Path:
        """Session directories must be reachable by the unprivileged sandbox uids, so by
        default they do not live under the data dir (often inside a private home)."""
        if self.sandbox_dir is not None:
            return self.sandbox_dir
        tag = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
        return Path("/var/tmp/tci") / tag

    @property
    def resolved_run_concurrency(self) -> int:
        return self.run_concurrency or 2 * (os.cpu_count() or 1)

    @property
    def worker_package_dir(self) -> Path:
        return Path(__file__).resolve().parent / "worker"
