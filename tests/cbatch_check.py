"""The contract of the compiled batch-file parser (``cirron/spool/_cbatch.c``): for any bytes, it
gives exactly what ``columnar._fast_file``'s msgspec decoder gives, or it declines (``None``) and
the decoder reads the file. Shared by ``tests/spool/test_cbatch.py`` and the check that
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


def check_bytes(data: bytes) -> bool:
    """Checks the contract on ``data`` for both readings (with and without marks) and for the
    header's session id; whether the compiled parser read it (rather than declined)."""
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
