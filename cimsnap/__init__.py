"""cimsnap: the CimFS layer store behind containerd's CimFS snapshotter, in pure Python."""

__version__ = "0.1.0"
