"""The bubblewrap command line: every namespace, no host path beyond the allowed ones."""

from pathlib import Path

from tci.sandbox.bwrap import (
    SandboxSpec,
    build_argv,
    bwrap_can_disable_userns,
    bwrap_env,
    prlimit_options,
)


def spec(**overrides) -> SandboxSpec:
    values = dict(
        workspace=Path("/s/work"), home=Path("/s/home"), etc_dir=Path("/s/etc"),
        empty_dir=Path("/s/empty"), runtime_site=Path("/r/site"), runtime_bin=Path("/r/site/bin"),
        worker_dir=Path("/w"), command_fd=5, event_fd=6, info_fd=7,
    )
    values.update(overrides)
    return SandboxSpec(**values)


def test_all_namespaces_and_no_capabilities():
    argv = build_argv(spec())
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--unshare-cgroup", "--unshare-net", "--die-with-parent", "--new-session",
                 "--clearenv"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--uid") + 1] == "1000"


def test_egress_leaves_the_prepared_namespace_alone():
    assert "--unshare-net" not in build_argv(spec(network="egress"))


def test_only_workspace_and_home_are_writable():
    argv = build_argv(spec())
    writable = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert writable == ["/s/home", "/s/work"]


def test_host_paths_seen_are_the_allowed_ones():
    argv = build_argv(spec())
    binds = ("--ro-bind", "--ro-bind-try", "--bind")
    sources = {argv[i + 1] for i, a in enumerate(argv) if a in binds}
    for source in sources:
        assert source.startswith(("/usr", "/etc/", "/s/", "/r/", "/w")), source
    assert not any(s.startswith(("/root", "/home", "/var", "/proc")) for s in sources)


def test_environment_is_built_not_inherited():
    env = bwrap_env(spec())
    assert env["HOME"] == "/home/user"
    assert env["TCI_WORKER_FDS"] == "5,6"
    assert env["PIP_BREAK_SYSTEM_PACKAGES"] == "1"
    assert not any(key.startswith(("TOGETHER", "TCI_DATA")) for key in env)


def test_command_is_our_init_then_the_worker_under_the_runtime_python():
    """pid 1 is our init (not dumpable, unlike bubblewrap's), from the worker's read-only
    mount, isolated from the environment and the cwd; it runs the worker as bwrap would."""
    argv = build_argv(spec())
    command = argv[argv.index("--") + 1:]
    assert command == ["/usr/bin/python3.11", "-S", "-I", "-B",
                       "/opt/tci/tci_worker/bwrap_init.py",
                       "/usr/bin/python3.11", "-m", "tci_worker"]
    assert "--as-pid-1" in argv and "--unshare-pid" in argv
    # The init's tie to the server: bubblewrap sets PR_SET_PDEATHSIG before exec'ing it.
    assert "--die-with-parent" in argv
    binds = {argv[i + 2]: argv[i + 1] for i, a in enumerate(argv) if a == "--ro-bind"}
    assert binds["/opt/tci/tci_worker"] == "/w"


def test_nested_user_namespaces_are_disabled_where_bubblewrap_can():
    assert "--disable-userns" in build_argv(spec(disable_userns=True))
    assert "--disable-userns" not in build_argv(spec(disable_userns=False))


def test_by_default_the_installed_bubblewrap_decides():
    # Debian 12's bubblewrap is 0.8.0, the first with --disable-userns: here it is on.
    assert ("--disable-userns" in build_argv(spec())) is bwrap_can_disable_userns()
    assert bwrap_can_disable_userns("/nonexistent/bwrap") is False


def test_limits_are_fixed_hard_and_soft():
    options = prlimit_options(256)
    assert options[0] == "--nofile=256:256"
    limits = dict(option[2:].split("=") for option in options)
    assert limits["core"] == "0:0"
    assert limits["rtprio"] == limits["rttime"] == limits["nice"] == "0:0"
    assert all(value.split(":")[0] == value.split(":")[1] for value in limits.values())
