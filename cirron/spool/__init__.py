"""Read the local spool: batch files → deduped records → sessions and span trees.

Session reconstruction and dedupe live in one module, :mod:`cirron.spool.reconstruct`.

::

    from cirron.spool import load_spool
    spool = load_spool(".cirron/spool")
    for session in spool.sessions:          # oldest first
        print(session.id, session.status, len(session.spans))

Several spools, summaries from the index, one session at a time (:mod:`cirron.spool.catalog`)::

    from cirron.spool import open_catalog
    cat = open_catalog(["runs/*/.cirron/spool"])
    for info in cat.sessions:               # SessionInfo, no record read when the index is warm
        print(info.id, info.status, info.spans, info.rank, info.run_id)
    session = cat.load(cat.sessions[-1])

Plain synchronous code with no heavy imports (orjson only; numpy only in
:mod:`cirron.spool.stream` and :mod:`cirron.spool.ranks`), so the CLI, the exporters and
``ci.trace()`` can all use it.
"""

from cirron.spool.catalog import Catalog, Run, SessionInfo, open_catalog
from cirron.spool.reader import BatchFile, iter_batches, list_batch_files, read_batch
from cirron.spool.reconstruct import (
    ORPHAN_SESSION_ID,
    Reconstruction,
    Reconstructor,
    Session,
    assign_sessions,
    children_index,
    merge_span,
    reconstruct,
    walk_tree,
)
from cirron.spool.sessions import Spool, load_sessions, load_spool

__all__ = [
    "ORPHAN_SESSION_ID",
    "BatchFile",
    "Catalog",
    "Reconstruction",
    "Reconstructor",
    "Run",
    "Session",
    "SessionInfo",
    "Spool",
    "assign_sessions",
    "children_index",
    "iter_batches",
    "list_batch_files",
    "load_sessions",
    "load_spool",
    "merge_span",
    "open_catalog",
    "read_batch",
    "reconstruct",
    "walk_tree",
]
