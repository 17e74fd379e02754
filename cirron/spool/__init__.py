"""Read the local spool: batch files → deduped records → sessions and span trees.

Session reconstruction and dedupe live in one module, :mod:`cirron.spool.reconstruct`.

::

    from cirron.spool import load_spool
    spool = load_spool(".cirron/spool")
    for session in spool.sessions:          # oldest first
        print(session.id, session.status, len(session.spans))

Plain synchronous code with no heavy imports (orjson only), so the CLI, the exporters and
``ci.trace()`` can all use it.
"""

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
    "Reconstruction",
    "Reconstructor",
    "Session",
    "Spool",
    "assign_sessions",
    "children_index",
    "iter_batches",
    "list_batch_files",
    "load_sessions",
    "load_spool",
    "merge_span",
    "read_batch",
    "reconstruct",
    "walk_tree",
]
