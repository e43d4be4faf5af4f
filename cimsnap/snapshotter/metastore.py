"""SQLite metadata store with containerd's snapshot storage semantics.

The equivalent of containerd's `core/snapshots/storage` (MetaStore + bolt verbs), kept in
`<root>/metadata.db`.  The snapshotter never touches SQL: it opens a :class:`Transaction` with
:meth:`MetaStore.transaction` and calls the verbs containerd defines:

- ``create_snapshot`` (active or view; the parent must exist and be committed; keys are unique),
- ``get_info``, ``get_snapshot`` (active/view with the parent ID chain, nearest first),
- ``commit_active`` (same ID, new name, kind committed, stored usage; refuses non-active),
- ``remove`` (refused while the snapshot has children),
- ``update_info`` with field paths ``labels`` and ``labels.<key>``,
- ``walk_info`` with containerd filter expressions, ``id_map``.

Snapshot IDs are decimal strings from a sequence that never repeats (bolt's NextSequence), so
``snapshots/<id>`` and ``rm-<id>`` directories cannot collide with a later snapshot.  Labels with
an empty value are not stored (containerd's WriteLabels).  Error kinds and texts follow
containerd's storage package (facts only): not found, already exists, failed precondition,
invalid argument.

Concurrency: WAL journal, one transaction per operation.  Write transactions start with
``BEGIN IMMEDIATE`` and are serialized within the process by a lock (fair queueing for threads)
and across processes by SQLite's write lock (with a long busy timeout).  Each thread uses its own
connection.

Durability: with ``durable=True`` (the default) every write transaction is on disk when it
returns (``synchronous=FULL``).  With ``durable=False`` a commit survives the death of the
process but not necessarily a power loss (``synchronous=NORMAL``: the WAL is synced at the next
durable commit or checkpoint); callers still ask for a durable commit (``transaction(...,
durable=True)``) before deleting files that depended on the change, which also makes every
earlier commit durable.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from cimsnap.errors import (
    AlreadyExistsError,
    CimsnapError,
    FailedPreconditionError,
    NotFoundError,
    UsageError,
)

from .filters import parse_all
from .model import Info, Kind, Snapshot, Usage

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, like bolt's NextSequence
    name       TEXT NOT NULL UNIQUE,
    parent_id  INTEGER REFERENCES snapshots(id),   -- always a committed snapshot
    kind       INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    size       INTEGER NOT NULL DEFAULT 0,
    inodes     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
CREATE TABLE IF NOT EXISTS labels (
    snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, key)
);
"""


class MetaStoreError(CimsnapError):
    """The database file cannot be opened or is not a cimsnap metadata store."""


def _now_ns() -> int:
    return time.time_ns()


class Transaction:
    """One metadata transaction; valid only inside ``MetaStore.transaction()``."""

    def __init__(self, conn: sqlite3.Connection, writable: bool) -> None:
        self._conn = conn
        self.writable = writable

    # -- helpers -------------------------------------------------------------------------------

    def _row(self, key: str) -> sqlite3.Row | None:
        return self._conn.execute(
            "SELECT id, name, parent_id, kind, created_ns, updated_ns, size, inodes"
            " FROM snapshots WHERE name = ?",
            (key,),
        ).fetchone()

    def _labels(self, snapshot_id: int) -> dict[str, str]:
        rows = self._conn.execute(
            "SELECT key, value FROM labels WHERE snapshot_id = ? ORDER BY key", (snapshot_id,)
        )
        return {k: v for k, v in rows}

    def _write_labels(self, snapshot_id: int, labels: dict[str, str] | None) -> dict[str, str]:
        self._conn.execute("DELETE FROM labels WHERE snapshot_id = ?", (snapshot_id,))
        kept = {k: v for k, v in (labels or {}).items() if v != ""}
        self._conn.executemany(
            "INSERT INTO labels (snapshot_id, key, value) VALUES (?, ?, ?)",
            [(snapshot_id, k, v) for k, v in kept.items()],
        )
        return kept

    def _name_of(self, snapshot_id: int | None) -> str:
        if snapshot_id is None:
            return ""
        row = self._conn.execute("SELECT name FROM snapshots WHERE id = ?", (snapshot_id,))
        found = row.fetchone()
        return "" if found is None else str(found[0])

    def _info(self, row: sqlite3.Row) -> Info:
        return Info(
            name=row["name"],
            kind=Kind(row["kind"]),
            parent=self._name_of(row["parent_id"]),
            labels=self._labels(row["id"]),
            created_ns=row["created_ns"],
            updated_ns=row["updated_ns"],
        )

    def _parent_chain(self, snapshot_id: int) -> tuple[str, ...]:
        """IDs from ``snapshot_id`` up to the base layer (nearest first)."""
        chain: list[str] = []
        current: int | None = snapshot_id
        seen: set[int] = set()
        while current is not None:
            if current in seen:  # a loop can only come from a hand-edited database
                raise MetaStoreError(f"parent chain of snapshot {snapshot_id} loops")
            seen.add(current)
            chain.append(str(current))
            row = self._conn.execute("SELECT parent_id FROM snapshots WHERE id = ?", (current,))
            found = row.fetchone()
            if found is None:
                raise NotFoundError("missing parent: not found")
            current = found[0]
        return tuple(chain)

    def _require_writable(self) -> None:
        if not self.writable:
            raise MetaStoreError("write attempted in a read-only transaction")

    # -- containerd storage verbs --------------------------------------------------------------

    def create_snapshot(
        self, kind: Kind, key: str, parent: str = "", labels: dict[str, str] | None = None
    ) -> Snapshot:
        """Create an active or view snapshot ``key`` on ``parent`` (storage.CreateSnapshot)."""
        self._require_writable()
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise UsageError(
                f"snapshot type {kind.display_name} invalid; only snapshots of type Active"
                " or View can be created"
            )
        parent_id: int | None = None
        if parent:
            prow = self._row(parent)
            if prow is None:
                raise NotFoundError(f"missing parent {parent!r} bucket")
            if prow["kind"] != Kind.COMMITTED:
                raise UsageError(f"parent {parent!r} is not committed snapshot")
            parent_id = prow["id"]
        if self._row(key) is not None:
            raise AlreadyExistsError(f"snapshot {key}")
        now = _now_ns()
        cursor = self._conn.execute(
            "INSERT INTO snapshots (name, parent_id, kind, created_ns, updated_ns)"
            " VALUES (?, ?, ?, ?, ?)",
            (key, parent_id, int(kind), now, now),
        )
        snapshot_id = cursor.lastrowid
        assert snapshot_id is not None
        self._write_labels(snapshot_id, labels)
        parents = self._parent_chain(parent_id) if parent_id is not None else ()
        return Snapshot(id=str(snapshot_id), kind=kind, parent_ids=parents)

    def get_info(self, key: str) -> tuple[str, Info, Usage]:
        """ID, info and stored usage of ``key`` (storage.GetInfo)."""
        row = self._row(key)
        if row is None:
            raise NotFoundError("snapshot does not exist")
        return str(row["id"]), self._info(row), Usage(row["size"], row["inodes"])

    def get_snapshot(self, key: str) -> Snapshot:
        """An active or view snapshot with its parent chain (storage.GetSnapshot)."""
        row = self._row(key)
        if row is None:
            raise NotFoundError("snapshot does not exist")
        kind = Kind(row["kind"])
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise FailedPreconditionError(f"requested snapshot {key} not active or view")
        parents = self._parent_chain(row["parent_id"]) if row["parent_id"] is not None else ()
        return Snapshot(id=str(row["id"]), kind=kind, parent_ids=parents)

    def update_info(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Update labels by field path; other fields are immutable (storage.UpdateInfo)."""
        self._require_writable()
        row = self._row(info.name)
        if row is None:
            raise NotFoundError("snapshot does not exist")
        current = self._info(row)
        labels = dict(current.labels)
        if fieldpaths:
            for path in fieldpaths:
                if path.startswith("labels."):
                    label = path[len("labels.") :]
                    labels[label] = info.labels.get(label, "")
                elif path == "labels":
                    labels = dict(info.labels)
                else:
                    raise UsageError(f"cannot update {path!r} field on snapshot {info.name!r}")
        else:
            labels = dict(info.labels)
        updated = _now_ns()
        kept = self._write_labels(row["id"], labels)
        self._conn.execute("UPDATE snapshots SET updated_ns = ? WHERE id = ?", (updated, row["id"]))
        current.labels = kept
        current.updated_ns = updated
        return current

    def walk_info(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        """Every snapshot matching any of ``filters``, in name order (storage.WalkInfo)."""
        matcher = parse_all(filters)
        rows = self._conn.execute(
            "SELECT id, name, parent_id, kind, created_ns, updated_ns, size, inodes"
            " FROM snapshots ORDER BY name"
        ).fetchall()
        for row in rows:
            info = self._info(row)
            if matcher.match_info(info):
                yield info

    def remove(self, key: str) -> tuple[str, Kind]:
        """Delete ``key``'s record; refused while it has children (storage.Remove)."""
        self._require_writable()
        row = self._row(key)
        if row is None:
            raise NotFoundError(f"snapshot {key}")
        child = self._conn.execute(
            "SELECT 1 FROM snapshots WHERE parent_id = ? LIMIT 1", (row["id"],)
        ).fetchone()
        if child is not None:
            raise FailedPreconditionError("cannot remove snapshot with child")
        self._conn.execute("DELETE FROM labels WHERE snapshot_id = ?", (row["id"],))
        self._conn.execute("DELETE FROM snapshots WHERE id = ?", (row["id"],))
        return str(row["id"]), Kind(row["kind"])

    def commit_active(
        self,
        key: str,
        name: str,
        usage: Usage,
        labels: dict[str, str] | None = None,
        parent: str = "",
    ) -> str:
        """Turn active ``key`` into committed ``name``, keeping its ID (storage.CommitActive)."""
        self._require_writable()
        if self._row(name) is not None:
            raise AlreadyExistsError(f"committed snapshot {name}")
        row = self._row(key)
        if row is None:
            raise NotFoundError(f"failed to get active snapshot {key!r}")
        if row["kind"] != Kind.ACTIVE:
            raise FailedPreconditionError(f"snapshot {key!r} is not active")
        parent_id = row["parent_id"]
        if parent:
            current_parent = self._name_of(parent_id)
            if current_parent and current_parent != parent:
                raise UsageError(f"cannot change parent of active snapshot {key!r} on commit")
            if not current_parent:
                prow = self._row(parent)
                if prow is None:
                    raise NotFoundError(f"missing parent {parent!r} of snapshot {key!r}")
                parent_id = prow["id"]
        if parent_id is not None:
            pkind = self._conn.execute(
                "SELECT kind FROM snapshots WHERE id = ?", (parent_id,)
            ).fetchone()
            if pkind is None:
                raise NotFoundError(f"missing parent of snapshot {key!r}")
            if pkind[0] != Kind.COMMITTED:
                raise FailedPreconditionError(
                    f"parent {self._name_of(parent_id)!r} is not committed"
                )
        now = _now_ns()
        self._conn.execute(
            "UPDATE snapshots SET name = ?, kind = ?, parent_id = ?, created_ns = ?,"
            " updated_ns = ?, size = ?, inodes = ? WHERE id = ?",
            (name, int(Kind.COMMITTED), parent_id, now, now, usage.size, usage.inodes, row["id"]),
        )
        self._write_labels(row["id"], labels)
        return str(row["id"])

    def id_map(self) -> dict[str, str]:
        """Snapshot ID -> name for every snapshot (storage.IDMap)."""
        rows = self._conn.execute("SELECT id, name FROM snapshots")
        return {str(i): str(n) for i, n in rows}


def _is_busy(err: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED (by code where Python has it, else by SQLite's message)."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(err)
    return "database is locked" in text or "database table is locked" in text


class MetaStore:
    """The metadata database of one snapshotter root (storage.MetaStore)."""

    def __init__(self, path: str | Path, *, durable: bool = True) -> None:
        self.path = Path(path)
        self.durable = durable
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        self._initialize()

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # transactions are explicit
                check_same_thread=False,  # each thread has its own; close() may run elsewhere
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
        except sqlite3.Error as err:
            raise MetaStoreError(f"cannot open metadata database: {err}", path=self.path) from err
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _initialize(self) -> None:
        conn = self._connect()
        # Two processes opening a fresh root at once: SQLite can answer "database is locked"
        # straight away (no busy handler) while the other one switches the new file to WAL or
        # recovers it, so that case is retried here until the busy timeout.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self._create_schema(conn)
                break
            except sqlite3.OperationalError as err:
                if _is_busy(err) and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                raise MetaStoreError(
                    f"not a usable metadata database: {err}", path=self.path
                ) from err
            except sqlite3.DatabaseError as err:
                raise MetaStoreError(
                    f"not a usable metadata database: {err}", path=self.path
                ) from err
        self._local.conn = conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        # WAL is a property of the file; switching needs no other connection in the middle
        # of a transaction, which BEGIN IMMEDIATE below would otherwise wait for anyway.
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise MetaStoreError(f"cannot switch database to WAL (got {mode})", path=self.path)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            elif row[0] != str(SCHEMA_VERSION):
                raise MetaStoreError(
                    f"metadata schema version {row[0]} is not supported"
                    f" (expected {SCHEMA_VERSION})",
                    path=self.path,
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise MetaStoreError("metadata store is closed", path=self.path)
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def transaction(
        self, writable: bool = False, *, durable: bool | None = None
    ) -> Iterator[Transaction]:
        """One transaction: committed when the block ends normally, rolled back otherwise.

        ``durable=True`` syncs this commit (and so every earlier one) to disk even in a store
        opened with ``durable=False``.
        """
        conn = self._conn()
        if conn.in_transaction:
            raise MetaStoreError("nested metadata transactions are not supported")
        lock = self._write_lock if writable else contextlib.nullcontext()
        force_sync = bool(writable and durable and not self.durable)
        with lock:
            if force_sync:
                conn.execute("PRAGMA synchronous = FULL")
            try:
                yield from self._run(conn, writable)
            finally:
                if force_sync:
                    conn.execute("PRAGMA synchronous = NORMAL")

    def _run(self, conn: sqlite3.Connection, writable: bool) -> Iterator[Transaction]:
        try:
            conn.execute("BEGIN IMMEDIATE" if writable else "BEGIN")
        except sqlite3.Error as err:
            raise MetaStoreError(f"failed to start transaction: {err}", path=self.path) from err
        try:
            yield Transaction(conn, writable)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            if writable:
                conn.execute("COMMIT")
            else:
                conn.execute("ROLLBACK")
        except sqlite3.Error as err:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise MetaStoreError(f"commit failed: {err}", path=self.path) from err

    def close(self) -> None:
        """Close every connection (containerd's MetaStore.Close)."""
        self._closed = True
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
