"""The SQLite metastore keeps containerd's snapshot storage semantics (core/snapshots/storage)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cimsnap.errors import (
    KIND_ALREADY_EXISTS,
    KIND_FAILED_PRECONDITION,
    KIND_INVALID_ARGUMENT,
    KIND_NOT_FOUND,
    CimsnapError,
)
from cimsnap.snapshotter.metastore import MetaStore, MetaStoreError
from cimsnap.snapshotter.model import Info, Kind, Usage


@pytest.fixture
def ms(tmp_path: Path):
    store = MetaStore(tmp_path / "metadata.db")
    yield store
    store.close()


def kind_of(fn) -> str:
    with pytest.raises(CimsnapError) as info:
        fn()
    return info.value.kind


def make_chain(ms: MetaStore, depth: int) -> list[str]:
    """committed c0 <- c1 <- ... ; returns the names, base first."""
    names: list[str] = []
    with ms.transaction(writable=True) as tx:
        parent = ""
        for i in range(depth):
            tx.create_snapshot(Kind.ACTIVE, f"extract-{i}", parent)
            tx.commit_active(f"extract-{i}", f"c{i}", Usage(10 * i, i))
            parent = f"c{i}"
            names.append(parent)
    return names


def test_create_and_get_info(ms: MetaStore) -> None:
    with ms.transaction(writable=True) as tx:
        snap = tx.create_snapshot(Kind.ACTIVE, "a", "", {"x": "1", "empty": ""})
    assert snap.kind is Kind.ACTIVE and snap.parent_ids == ()
    with ms.transaction() as tx:
        snapshot_id, info, usage = tx.get_info("a")
    assert snapshot_id == snap.id
    assert info.name == "a" and info.kind is Kind.ACTIVE and info.parent == ""
    assert info.labels == {"x": "1"}  # empty values are not stored (WriteLabels)
    assert info.created_ns == info.updated_ns > 0
    assert usage == Usage(0, 0)


def test_parent_chain_is_nearest_first(ms: MetaStore) -> None:
    names = make_chain(ms, 3)
    with ms.transaction(writable=True) as tx:
        ids = [tx.get_info(n)[0] for n in names]
        snap = tx.create_snapshot(Kind.VIEW, "v", names[-1])
    assert snap.parent_ids == tuple(reversed(ids))
    with ms.transaction() as tx:
        assert tx.get_snapshot("v").parent_ids == tuple(reversed(ids))
        assert tx.get_info("v")[1].parent == "c2"


def test_create_errors(ms: MetaStore) -> None:
    with ms.transaction(writable=True) as tx:
        tx.create_snapshot(Kind.ACTIVE, "a")
        assert kind_of(lambda: tx.create_snapshot(Kind.ACTIVE, "a")) == KIND_ALREADY_EXISTS
        assert kind_of(lambda: tx.create_snapshot(Kind.ACTIVE, "b", "nope")) == KIND_NOT_FOUND
        # the parent must be committed
        assert kind_of(lambda: tx.create_snapshot(Kind.ACTIVE, "b", "a")) == KIND_INVALID_ARGUMENT
        assert kind_of(lambda: tx.create_snapshot(Kind.COMMITTED, "c")) == KIND_INVALID_ARGUMENT


def test_commit_keeps_id_and_replaces_labels(ms: MetaStore) -> None:
    with ms.transaction(writable=True) as tx:
        snap = tx.create_snapshot(Kind.ACTIVE, "extract-1", "", {"old": "1"})
        committed_id = tx.commit_active("extract-1", "layer", Usage(123, 4), {"new": "2"})
    assert committed_id == snap.id
    with ms.transaction() as tx:
        snapshot_id, info, usage = tx.get_info("layer")
        assert snapshot_id == snap.id and info.kind is Kind.COMMITTED
        assert info.labels == {"new": "2"} and usage == Usage(123, 4)
        assert kind_of(lambda: tx.get_info("extract-1")) == KIND_NOT_FOUND
        # committed snapshots have no mounts
        assert kind_of(lambda: tx.get_snapshot("layer")) == KIND_FAILED_PRECONDITION


def test_commit_errors(ms: MetaStore) -> None:
    make_chain(ms, 1)
    with ms.transaction(writable=True) as tx:
        tx.create_snapshot(Kind.VIEW, "v", "c0")
        tx.create_snapshot(Kind.ACTIVE, "a", "c0")
        assert kind_of(lambda: tx.commit_active("v", "x", Usage())) == KIND_FAILED_PRECONDITION
        assert kind_of(lambda: tx.commit_active("gone", "x", Usage())) == KIND_NOT_FOUND
        assert kind_of(lambda: tx.commit_active("a", "c0", Usage())) == KIND_ALREADY_EXISTS
        # the parent given at commit must agree with the one at prepare
        assert kind_of(lambda: tx.commit_active("a", "x", Usage(), parent="v")) == (
            KIND_INVALID_ARGUMENT
        )


def test_commit_may_set_a_parent_on_a_parentless_snapshot(ms: MetaStore) -> None:
    make_chain(ms, 1)
    with ms.transaction(writable=True) as tx:
        tx.create_snapshot(Kind.ACTIVE, "extract-x")
        tx.commit_active("extract-x", "rebased", Usage(), parent="c0")
        assert tx.get_info("rebased")[1].parent == "c0"


def test_remove_refused_with_children_and_ids_never_reused(ms: MetaStore) -> None:
    make_chain(ms, 2)
    with ms.transaction(writable=True) as tx:
        assert kind_of(lambda: tx.remove("c0")) == KIND_FAILED_PRECONDITION
        assert kind_of(lambda: tx.remove("missing")) == KIND_NOT_FOUND
        removed_id, kind = tx.remove("c1")
        assert kind is Kind.COMMITTED
        tx.remove("c0")
        new = tx.create_snapshot(Kind.ACTIVE, "again")
    assert int(new.id) > int(removed_id)
    with ms.transaction() as tx:
        assert tx.id_map() == {new.id: "again"}


def test_update_labels_by_field_path(ms: MetaStore) -> None:
    with ms.transaction(writable=True) as tx:
        tx.create_snapshot(Kind.ACTIVE, "a", "", {"keep": "k", "drop": "d"})
        before = tx.get_info("a")[1]
    with ms.transaction(writable=True) as tx:
        info = tx.update_info(
            Info(name="a", labels={"new": "n", "drop": "", "keep": "ignored"}),
            ["labels.new", "labels.drop"],
        )
    assert info.labels == {"keep": "k", "new": "n"}
    assert info.created_ns == before.created_ns and info.updated_ns >= before.updated_ns
    with ms.transaction(writable=True) as tx:
        assert tx.update_info(Info(name="a", labels={"z": "1"}), ["labels"]).labels == {"z": "1"}
        assert tx.update_info(Info(name="a", labels={"y": "2"})).labels == {"y": "2"}
        assert kind_of(lambda: tx.update_info(Info(name="a"), ["parent"])) == (
            KIND_INVALID_ARGUMENT
        )
        assert kind_of(lambda: tx.update_info(Info(name="zz"), ["labels"])) == KIND_NOT_FOUND
    with ms.transaction() as tx:
        assert tx.get_info("a")[1].labels == {"y": "2"}


def test_walk_with_filters(ms: MetaStore) -> None:
    make_chain(ms, 2)
    with ms.transaction(writable=True) as tx:
        tx.create_snapshot(Kind.ACTIVE, "ctr-1", "c1", {"role": "app", "dotted.key/x": "v"})
        tx.create_snapshot(Kind.VIEW, "view-1", "c0", {"role": "debug"})

    def names(*filters: str) -> list[str]:
        with ms.transaction() as tx:
            return [i.name for i in tx.walk_info(filters)]

    assert names() == ["c0", "c1", "ctr-1", "view-1"]
    assert names("kind==committed") == ["c0", "c1"]
    assert names("kind==view") == ["view-1"]
    assert names("name==ctr-1") == ["ctr-1"]
    assert names("parent==c0") == ["c1", "view-1"]
    assert names("labels.role") == ["ctr-1", "view-1"]
    assert names('labels."dotted.key/x"==v') == ["ctr-1"]
    assert names("labels.role==app,kind==active") == ["ctr-1"]
    assert names("labels.role==app,kind==view") == []
    assert names("kind==view", "name==c0") == ["c0", "view-1"]  # OR of filters
    assert names("labels.role!=app") == ["c0", "c1", "view-1"]
    assert names("name~=^c[0-9]$") == ["c0", "c1"]
    assert names("") == ["c0", "c1", "ctr-1", "view-1"]
    with ms.transaction() as tx:
        with pytest.raises(CimsnapError) as err:
            list(tx.walk_info(["name=="]))
        assert err.value.kind == KIND_INVALID_ARGUMENT


def test_persists_and_uses_wal(tmp_path: Path) -> None:
    db = tmp_path / "metadata.db"
    store = MetaStore(db)
    make_chain(store, 2)
    store.close()
    store = MetaStore(db)
    with store.transaction() as tx:
        assert [i.name for i in tx.walk_info()] == ["c0", "c1"]
    store.close()
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failed_operation_rolls_back(ms: MetaStore) -> None:
    with pytest.raises(RuntimeError), ms.transaction(writable=True) as tx:
        tx.create_snapshot(Kind.ACTIVE, "a")
        raise RuntimeError("boom")
    with ms.transaction() as tx:
        assert list(tx.walk_info()) == []


def test_read_transaction_cannot_write(ms: MetaStore) -> None:
    with ms.transaction() as tx, pytest.raises(MetaStoreError):
        tx.create_snapshot(Kind.ACTIVE, "a")


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 200],
    ids=["garbage", "truncated-header"],
)
def test_malformed_database_is_one_clear_error(tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "metadata.db"
    db.write_bytes(content)
    with pytest.raises(MetaStoreError) as err:
        MetaStore(db)
    assert str(db) in str(err.value) and "\n" not in str(err.value)


def test_unknown_schema_version_refused(tmp_path: Path) -> None:
    db = tmp_path / "metadata.db"
    MetaStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(MetaStoreError, match="schema version 99"):
        MetaStore(db)


def test_threads_lose_no_updates(ms: MetaStore) -> None:
    make_chain(ms, 1)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(25):
                with ms.transaction(writable=True) as tx:
                    tx.create_snapshot(Kind.ACTIVE, f"t{n}-{i}", "c0")
                if i % 2:
                    with ms.transaction(writable=True) as tx:
                        tx.remove(f"t{n}-{i}")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with ms.transaction() as tx:
        names = {i.name for i in tx.walk_info(["kind==active"])}
    assert names == {f"t{n}-{i}" for n in range(6) for i in range(0, 25, 2)}


def _process_worker(db: str, n: int, count: int) -> None:
    store = MetaStore(db)
    for i in range(count):
        with store.transaction(writable=True) as tx:
            tx.create_snapshot(Kind.ACTIVE, f"p{n}-{i}", "c0", {"n": str(n)})
    store.close()


def test_processes_lose_no_updates(tmp_path: Path) -> None:
    db = tmp_path / "metadata.db"
    store = MetaStore(db)
    make_chain(store, 1)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_process_worker, args=(str(db), n, 30)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with store.transaction() as tx:
        infos = list(tx.walk_info(["kind==active"]))
        ids = set(tx.id_map())
    store.close()
    assert len(infos) == 120 and len(ids) == 121


class MetaStoreModel(RuleBasedStateMachine):
    """The store agrees with a plain-Python model of containerd's rules for any sequence."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.ms = MetaStore(Path(self.tmp.name) / "m.db")
        self.model: dict[str, tuple[Kind, str]] = {}  # name -> (kind, parent)

    def teardown(self) -> None:
        self.ms.close()
        self.tmp.cleanup()

    names = st.sampled_from([f"s{i}" for i in range(6)])

    @rule(name=names, parent=st.one_of(st.just(""), names), view=st.booleans())
    def create(self, name: str, parent: str, view: bool) -> None:
        kind = Kind.VIEW if view else Kind.ACTIVE
        expected = None
        if parent and parent not in self.model:
            expected = KIND_NOT_FOUND
        elif parent and self.model[parent][0] is not Kind.COMMITTED:
            expected = KIND_INVALID_ARGUMENT
        elif name in self.model:
            expected = KIND_ALREADY_EXISTS
        try:
            with self.ms.transaction(writable=True) as tx:
                tx.create_snapshot(kind, name, parent)
        except CimsnapError as err:
            assert err.kind == expected
            return
        assert expected is None
        self.model[name] = (kind, parent)

    @rule(key=names, name=names)
    def commit(self, key: str, name: str) -> None:
        expected = None
        if name in self.model:
            expected = KIND_ALREADY_EXISTS
        elif key not in self.model:
            expected = KIND_NOT_FOUND
        elif self.model[key][0] is not Kind.ACTIVE:
            expected = KIND_FAILED_PRECONDITION
        try:
            with self.ms.transaction(writable=True) as tx:
                tx.commit_active(key, name, Usage())
        except CimsnapError as err:
            assert err.kind == expected
            return
        assert expected is None
        parent = self.model.pop(key)[1]
        self.model[name] = (Kind.COMMITTED, parent)

    @rule(key=names)
    def remove(self, key: str) -> None:
        expected = None
        if key not in self.model:
            expected = KIND_NOT_FOUND
        elif any(p == key for _, p in self.model.values()):
            expected = KIND_FAILED_PRECONDITION
        try:
            with self.ms.transaction(writable=True) as tx:
                tx.remove(key)
        except CimsnapError as err:
            assert err.kind == expected
            return
        assert expected is None
        del self.model[key]

    @invariant()
    def same_contents(self) -> None:
        with self.ms.transaction() as tx:
            stored = {i.name: (i.kind, i.parent) for i in tx.walk_info()}
        assert stored == self.model


TestMetaStoreModel = MetaStoreModel.TestCase
TestMetaStoreModel.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_fast_store_syncs_only_when_asked(tmp_path: Path) -> None:
    store = MetaStore(tmp_path / "fast.db", durable=False)
    try:
        with store.transaction(writable=True) as tx:
            assert tx._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        with store.transaction(writable=True, durable=True) as tx:
            assert tx._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        with store.transaction(writable=True) as tx:
            assert tx._conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    finally:
        store.close()
    durable = MetaStore(tmp_path / "full.db")
    try:
        with durable.transaction(writable=True) as tx:
            assert tx._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        durable.close()


def test_a_fresh_database_busy_at_open_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes opening a fresh root at once: SQLite may answer "database is locked" at
    once (both switching the new file to WAL); opening retries instead of failing."""
    real = MetaStore._create_schema
    answers = iter([sqlite3.OperationalError("database is locked")] * 3)

    def busy_then_real(self: MetaStore, conn: sqlite3.Connection) -> None:
        error = next(answers, None)
        if error is not None:
            raise error
        real(self, conn)

    monkeypatch.setattr(MetaStore, "_create_schema", busy_then_real)
    store = MetaStore(tmp_path / "metadata.db")
    try:
        with store.transaction(writable=True) as tx:
            tx.create_snapshot(Kind.ACTIVE, "a", "", {})
    finally:
        store.close()


def test_other_open_errors_are_not_retried(tmp_path: Path) -> None:
    (tmp_path / "metadata.db").write_bytes(b"not a database at all, " * 100)
    with pytest.raises(MetaStoreError, match=r"metadata\.db: .*metadata database.*not a database"):
        MetaStore(tmp_path / "metadata.db")


def test_many_processes_open_one_fresh_database(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(6)
    procs = [
        ctx.Process(target=_open_after_barrier, args=(tmp_path / "metadata.db", barrier))
        for _ in range(6)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0] * 6


def _open_after_barrier(path: Path, barrier: threading.Barrier) -> None:
    barrier.wait()
    MetaStore(path).close()
