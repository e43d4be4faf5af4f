"""Property tests: read(write(layer)) == layer, and our bytes == Go archive/tar's bytes.

Random layers mix directories, files (with security descriptors, EAs, any FILETIMEs), alternate
streams, symlinks, junctions, hard links and whiteouts, with Unicode and long names.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsnap.formats.secdesc import Ace, Acl, SecurityDescriptor, Sid
from cimsnap.formats.wintar import (
    EntryKind,
    ExtendedAttribute,
    FileTimes,
    WinMetadata,
    WinTarEntry,
    WinTarReader,
    WinTarWriter,
    encode_reparse_point,
)
from cimsnap.formats.wintar.times import FILETIME_MAX
from tests.formats.wintar import hcsshim_layout as hl
from tests.formats.wintar.conftest import GoTar

DIR = 0x10
REPARSE = 0x400
# Go's time.UnixNano is only defined from 1678 to 2262: FILETIMEs inside that range.
GO_MIN_FT = 32_000_000_000_000_000
GO_MAX_FT = 200_000_000_000_000_000

NAME_CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\:\x00")
names = st.text(NAME_CHARS, min_size=1, max_size=24).filter(
    lambda n: n not in (".", "..") and not n.startswith(".wh.")
)
long_names = st.one_of(
    names, st.text(NAME_CHARS, min_size=90, max_size=120).filter(lambda n: not n.startswith(".wh."))
)


def filetimes(low: int = 0, high: int = FILETIME_MAX) -> st.SearchStrategy[FileTimes]:
    ft = st.one_of(
        st.integers(low, high),
        st.integers(low // 10**7, high // 10**7).map(lambda s: s * 10**7),  # whole seconds
    )
    return st.builds(FileTimes, ft, ft, ft, ft)


sids = st.builds(
    Sid,
    st.one_of(st.sampled_from([0, 1, 3, 5, 15, 16]), st.integers(0, (1 << 48) - 1)),
    st.lists(st.integers(0, (1 << 32) - 1), max_size=15).map(tuple),
)
aces = st.builds(
    Ace,
    st.sampled_from([0, 1, 2, 3, 0x11]),
    st.integers(0, 255),
    st.integers(0, (1 << 32) - 1),
    sids,
)
acls = st.builds(Acl, st.just(2), st.lists(aces, max_size=5).map(tuple))
security_descriptors = st.builds(
    SecurityDescriptor,
    st.integers(0, 0xFFFF).map(lambda c: (c | 0x8000) & ~0x3 | 0x14),
    st.one_of(st.none(), sids),
    st.one_of(st.none(), sids),
    acls,
    acls,
).map(lambda sd: sd.pack())

ea_names = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="="),
    min_size=1,
    max_size=40,
)
ea_lists = st.lists(
    st.tuples(ea_names, st.binary(max_size=80)), max_size=4, unique_by=lambda t: t[0].upper()
).map(lambda items: tuple(ExtendedAttribute(n, v) for n, v in sorted(items)))


@dataclass
class Layer:
    """Steps for the writer and the entries the reader must give back."""

    steps: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    expected: list[tuple[WinTarEntry, bytes]] = field(default_factory=list)


@st.composite
def layers(draw: st.DrawFn, times: st.SearchStrategy[FileTimes]) -> Layer:
    layer = Layer()
    dirs = ["Files"]
    files: list[str] = []
    used: set[str] = {"Files"}

    def fresh(parent: str) -> str:
        name = draw(long_names)
        path = parent + "\\" + name
        while path.upper() in used:
            path += "_"
        used.add(path.upper())
        return path

    def meta(directory: bool) -> WinMetadata:
        attrs = draw(st.integers(0, 0xFFFFFFFF)) & ~(DIR | REPARSE)
        if directory:
            attrs |= DIR
        sd = draw(st.one_of(st.none(), security_descriptors))
        eas = draw(ea_lists)
        return WinMetadata(attrs, draw(times), sd, eas)

    def expect(
        kind: EntryKind, path: str, m: WinMetadata | None, data: bytes = b"", **kw: Any
    ) -> None:
        entry = WinTarEntry(kind=kind, path=path, size=len(data), **kw)
        if m is not None:
            entry.attributes, entry.times = m.attributes, m.times
            entry.security_descriptor, entry.eas = m.security_descriptor, m.eas
        layer.expected.append((entry, data))

    root = meta(True)
    layer.steps.append(("dir", ("Files", root)))
    expect(EntryKind.DIRECTORY, "Files", root)
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["dir", "file", "file", "symlink", "hardlink", "whiteout"]))
        parent = draw(st.sampled_from(dirs))
        if kind == "dir":
            path, m = fresh(parent), meta(True)
            dirs.append(path)
            layer.steps.append(("dir", (path, m)))
            expect(EntryKind.DIRECTORY, path, m)
            owner_times: FileTimes | None = m.times
        elif kind == "file":
            path, m = fresh(parent), meta(False)
            data = draw(st.binary(max_size=1500))
            files.append(path)
            layer.steps.append(("file", (path, m, data)))
            expect(EntryKind.FILE, path, m, data)
            owner_times = m.times
        elif kind == "symlink":
            path, m = fresh(parent), meta(draw(st.booleans()))
            target = draw(st.sampled_from(["a.txt", "..\\b", "C:\\Windows", "\\\\srv\\share\\x"]))
            mount = draw(st.booleans())
            layer.steps.append(("symlink", (path, m, target, mount)))
            m = WinMetadata(m.attributes | REPARSE, m.times, m.security_descriptor, m.eas)
            expect(
                EntryKind.SYMLINK,
                path,
                m,
                link_target=target,
                is_mount_point=mount,
                reparse=encode_reparse_point(target, mount),
            )
            owner_times = m.times
        elif kind == "hardlink" and files:
            path, target = fresh(parent), draw(st.sampled_from(files))
            m = WinMetadata(draw(st.integers(0, 0xFFFFFFFF)), draw(times))
            layer.steps.append(("hardlink", (path, target, m)))
            expect(EntryKind.HARDLINK, path, m, link_target=target)
            owner_times = None
        else:
            path = fresh(parent)
            layer.steps.append(("whiteout", (path,)))
            expect(EntryKind.WHITEOUT, path, None)
            owner_times = None
        if owner_times is not None:
            for stream in draw(st.lists(names, max_size=2, unique=True)):
                data = draw(st.binary(max_size=300))
                layer.steps.append(("stream", (path, stream, data)))
                t = owner_times
                expect(
                    EntryKind.STREAM,
                    path,
                    None,
                    data,
                    stream_name=stream,
                    times=FileTimes(t.last_write, t.last_write, t.change, t.last_access),
                )
    return layer


def write(layer: Layer) -> bytes:
    out = io.BytesIO()
    with WinTarWriter(out) as w:
        for kind, args in layer.steps:
            if kind == "dir":
                w.add_directory(*args)
            elif kind == "file":
                w.add_file(*args)
            elif kind == "symlink":
                path, m, target, mount = args
                w.add_symlink(path, m, target, mount_point=mount)
            elif kind == "hardlink":
                w.add_hardlink(*args)
            elif kind == "stream":
                w.add_stream(*args)
            else:
                w.add_whiteout(*args)
    return out.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers(filetimes()))
def test_read_of_write_gives_the_same_layer(layer: Layer) -> None:
    data = write(layer)
    got = [(e, e.data.read()) for e in WinTarReader(io.BytesIO(data), "rt.tar")]
    assert got == layer.expected
    # Python's tarfile agrees on the entry names and sizes.
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert len(tf.getmembers()) == len(layer.expected)


def hcsshim_specs(layer: Layer) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    last: dict[str, Any] | None = None
    for kind, args in layer.steps:
        if kind in ("dir", "file"):
            path, m = args[0], args[1]
            t = (m.times.creation, m.times.last_write, m.times.change, m.times.last_access)
            eas = {ea.name: ea.value for ea in m.eas}
            if kind == "dir":
                last = hl.basic_info_header(path, 0, m.attributes, t)
                hl.add_backup_streams(last, m.security_descriptor, eas, has_data=False)
            else:
                last = hl.file_header(path, args[2], m.attributes, t, m.security_descriptor, eas)
            specs.append(last)
        elif kind == "symlink":
            path, m, target, mount = args
            t = (m.times.creation, m.times.last_write, m.times.change, m.times.last_access)
            last = hl.symlink_header(path, target, m.attributes | REPARSE, t, mount)
            eas = {ea.name: ea.value for ea in m.eas}
            hl.add_backup_streams(last, m.security_descriptor, eas, has_data=False)
            specs.append(last)
        elif kind == "hardlink":
            path, target, m = args
            t = (m.times.creation, m.times.last_write, m.times.change, m.times.last_access)
            specs.append(hl.hardlink_header(path, target, m.attributes, t))
        elif kind == "stream":
            assert last is not None
            specs.append(hl.stream_header(last, args[1], args[2]))
        else:
            specs.append(hl.whiteout_header(args[0]))
    return specs


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers(filetimes(GO_MIN_FT, GO_MAX_FT)))
def test_bytes_equal_go_archive_tar_with_hcsshim_headers(gotar: GoTar, layer: Layer) -> None:
    assert write(layer) == gotar("write", hcsshim_specs(layer))
