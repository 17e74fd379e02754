"""Read the local spool: batch files → deduped records → sessions and span trees.

::

    from cirron.spool import load_spool
    spool = load_spool(".cirron/spool")
    for session in spool.sessions:          # oldest first
        print(session.id, session.status, len(session.spans))

Plain synchronous code with no heavy imports (orjson only), so the CLI, the exporters and
``ci.trace()`` can all use it.
"""

from cirron.spool.reader import BatchFile, iter_batches, list_batch_files, read_batch
from cirron.spool.sessions import (
    ORPHAN_SESSION_ID,
    Session,
    Spool,
    assign_sessions,
    children_index,
    load_sessions,
    load_spool,
    merge_span,
    walk_tree,
)

__all__ = [
    "ORPHAN_SESSION_ID",
    "BatchFile",
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
    "walk_tree",
]
