"""containerd proxy plugin: the snapshots.v1 gRPC service (+ service plugins) on a unix socket.

- :mod:`.snapshots`  the ``containerd.services.snapshots.v1.Snapshots`` handlers
- :mod:`.server`     socket, thread pool, plugin registration, shutdown, config snippet
- :mod:`.plugins`    hook for more services on the same server (the differ's diff.v1)
- :mod:`.client`     a typed client (tests, benchmarks, scripts; also talks to containerd)
- :mod:`.errors`     containerd error kinds <-> gRPC codes
- :mod:`.logs`       structured logging (logfmt or JSON)
- :mod:`.proto`      the ``.proto`` files written here and their generated modules
"""
