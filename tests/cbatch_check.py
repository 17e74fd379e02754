"""The contract of the compiled batch-file parser (``cirron/spool/_cbatch.c``): for any bytes, it
gives exactly what ``columnar._fast_file``'s msgspec decoder gives, or it declines (``None``) and
the decoder reads the file; its keys scan gives the index's light pass exactly the keys of the
msgspec ``"keys"`` reading (``cirron.spool.batchkeys``), or declines. Shared by ``tests/spool/test_cbatch.py`` and the check that
``tests/conftest.py`` runs on every spool a test leaves behind."""

from __future__ import annotations

import stat
import struct
from pathlib import Path
from typing import Any

#: Where tests keep spools, relative to their tmp_path (looked for this deep, not further: some
#: tests hold whole virtualenvs there).
SPOOL_GLOBS = (".cirron/spool/*.json", "*/.cirron/spool/*.json", "*/*/.cirron/spool/*.json")


def columnar_module() -> Any:
    from cirron.spool import columnar

    return columnar


def decoder_result(data: bytes, with_marks: bool) -> Any:
    """What ``_fast_file`` gives without the compiled parser."""
    columnar = columnar_module()
    saved = columnar._cbatch
    columnar._cbatch = None
    try:
        return columnar._fast_file(data, with_marks)
    finally:
        columnar._cbatch = saved


def _bits(values: list[Any]) -> list[bytes]:
    return [struct.pack("<d", v) for v in values]  # exact: tells -0.0 from 0.0


def assert_same_columns(got: Any, want: Any) -> None:
    """Both results of ``_fast_file`` are the same: column names, types, values and nulls, the
    mark values (bit for bit), the session id and the snapshots."""
    assert want is not None
    spans, marks, values, sid, snaps = got
    for have, ref in ((spans, want[0]), (marks, want[1])):
        assert list(have) == list(ref)
        for name, arr in ref.items():
            have[name].validate(full=True)
            assert have[name].type == arr.type, name
            assert have[name].null_count == arr.null_count, name
            assert have[name].equals(arr), (name, have[name], arr)
    assert all(type(v) is float for v in values)
    assert _bits(values) == _bits(want[2])
    assert type(sid) is type(want[3]) and sid == want[3]
    assert snaps == want[4]


def compiled_result(data: bytes, with_marks: bool) -> Any:
    """The compiled parser's result as ``_fast_file`` returns it (``None``: it declined), even
    while a test has hidden the parser from the reader."""
    import importlib

    columnar = columnar_module()
    saved = columnar._cbatch
    columnar._cbatch = importlib.import_module("cirron.spool._cbatch")
    try:
        return columnar._compiled_file(data, with_marks)
    finally:
        columnar._cbatch = saved


def check_header(data: bytes) -> bool:
    """``_cbatch.session_of`` gives the session id the index's header decoder gives (a non-empty
    string, else None), or declines; whether it read ``data``."""
    import importlib

    from cirron.spool.index import _HEADER

    got = importlib.import_module("cirron.spool._cbatch").session_of(data)
    if got is None:
        return False
    sid = _HEADER.decode(data).session_id
    assert got == (sid if type(sid) is str and sid else None,)
    return True


def compiled_keys(data: bytes, warn: Any) -> Any:
    """``_cbatch.keys``'s reading as ``batchkeys`` takes it (``None``: declined), even while a test
    has hidden the parser from the reader."""
    import importlib

    from cirron.spool import batchkeys

    saved = batchkeys._cbatch
    batchkeys._cbatch = importlib.import_module("cirron.spool._cbatch")
    try:
        return batchkeys._compiled_keys(data, "b.json", warn)
    finally:
        batchkeys._cbatch = saved


def assert_same_keys(got: Any, want: Any) -> None:
    """Two :class:`cirron.spool.batchkeys.FileKeys` are the same: header fields, every column
    (dtype and values) and the root candidates with their records."""
    import numpy as np

    assert (got.session_id, got.lock_protocol, got.sdk_version, got.resource) == (
        want.session_id, want.lock_protocol, want.sdk_version, want.resource)
    assert type(got.session_id) is type(want.session_id) and type(got.sdk_version) is type(want.sdk_version)
    for part in ("spans", "marks", "snapshots"):
        have, ref = getattr(got, part), getattr(want, part)
        assert list(have) == list(ref), part
        for name, col in ref.items():
            assert have[name].dtype == col.dtype and np.array_equal(have[name], col), (part, name, have[name], col)
    assert got.roots == want.roots


def check_keys(data: bytes) -> bool:
    """``_cbatch.keys`` gives the keys (and warnings) the msgspec ``"keys"`` reading gives, or
    declines; whether it read ``data``."""
    from cirron.spool.batchkeys import keys_of_batch
    from cirron.spool.reader import parse_batch

    got_warnings: list[str] = []
    got = compiled_keys(data, got_warnings.append)
    if got is None:
        return False
    want_warnings: list[str] = []
    batch = parse_batch(data, "b.json", want_warnings.append, "keys")
    assert batch is not None
    assert_same_keys(got, keys_of_batch(batch))
    assert got_warnings == want_warnings
    # what it reads, a summary read keeps every record of, with the same warnings (spool list counts)
    summary_warnings: list[str] = []
    summary = parse_batch(data, "b.json", summary_warnings.append, "summary")
    assert summary is not None and summary["session_id"] == got.session_id
    assert [len(summary[k]) for k in ("spans", "marks", "snapshots")] == [
        len(getattr(got, k)["hi"]) for k in ("spans", "marks", "snapshots")]
    assert summary_warnings == got_warnings
    return True


def check_bytes(data: bytes) -> bool:
    """Checks the contract on ``data`` for both readings (with and without marks), for the keys
    scan and for the header's session id; whether the compiled parser read it (rather than declined)."""
    keys_read = check_keys(data)
    assert check_header(data) or not keys_read  # what the keys scan reads, the header scan reads too
    read = False
    for with_marks in (True, False):
        got = compiled_result(data, with_marks)
        if got is not None:
            assert_same_columns(got, decoder_result(data, with_marks))
            read = True
    assert check_header(data) or not read  # what the parser reads, the header scan reads too
    return read


def check_spools_under(root: Path) -> int:
    """Checks the contract on every batch file of the spools under ``root``; how many files."""
    n = 0
    for pattern in SPOOL_GLOBS:
        for path in root.glob(pattern):
            try:
                if not stat.S_ISREG(path.lstat().st_mode):  # tests leave FIFOs, links and folders there too
                    continue
                data = path.read_bytes()
            except OSError:  # removed meanwhile
                continue
            check_bytes(data)
            n += 1
    return n
