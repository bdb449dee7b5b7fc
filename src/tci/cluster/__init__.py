"""tci on a Ray cluster: host actors (a LocalHost on each node offering `tci_host`) and the
gateway's RayHost that places and routes sessions to them. Imported only when
TCI_RAY_ADDRESS (or `--ray-address`) is set: a single machine never imports Ray."""
