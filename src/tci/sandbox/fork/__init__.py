"""The fork start path (TCI_SANDBOX_START=fork), read in this order:

Host side (this package, in the server):
  starter.py           ForkStarter: the launcher's starter; asks the sessions' template for a
                       fork, reads the init's report and its pidfd (ForkedInit).
  template_process.py  TemplateProcess: starts one template (sessions' or runs') and talks to
                       it over a SOCK_SEQPACKET socket; ForkedInit: a session's pid 1.
  pools.py             what is made ahead: egress networks (NetworkPool), and for one-shot
                       runs, empty network namespaces and cgroups.

Sandbox side (src/tci/worker/, the directory exposed read-only to every sandbox):
  template.py          the template: builds the sandbox's filesystem, preloads the runtime,
                       then SpawnLoop forks on request.
  confine.py           a session's fork, its init: cgroup, namespaces, mounts, then uid, user
                       namespace, capabilities, seccomp, verification, then it forks the worker.
  oneshot.py           a one-shot run's fork: the same confinement, then the program.

The launcher around it (uid, volume, cgroup, teardown) is sandbox/launcher.py; one-shot runs'
host side is runs/sandboxes.py.
"""
