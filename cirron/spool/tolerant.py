"""What other schema_version 1 writers put on disk, read as this SDK's own records.

The spool format is an open contract: any writer of ``schema_version: 1`` is read losslessly.
Writers differ in a few spellings; each is mapped here, once, when a batch is read
(:func:`cirron.spool.reader.read_batch` calls :func:`normalize_mark` and
:func:`normalize_snapshot`), and blob references are resolved by :func:`resolve_blob_uri`:

=============================  ======================================================
another writer                 read as
=============================  ======================================================
snapshot ``tensor_name``       ``tensor``
no snapshot ``role``           ``"gradient"`` for a name ending ``.grad``, else ``"weight"``
histogram ``bins`` (edges)     ``min`` = first edge, ``max`` = last edge
``value: null`` +              the float NaN / +inf / -inf (``value_type`` ``"float"``)
``value_nonfinite``
``value_type: "string"``       ``"str"``
``blob_uri: file:///abs/...``  the same file when it lies inside ``.cirron/``; a spool moved
                               elsewhere keeps working through the ``snapshots/<span>/<file>``
                               tail; anything else is refused
gradient blob keys without     ``0.weight.grad`` is also looked up as ``0.weight`` in
``.grad``                      ``gradients.safetensors`` (:func:`blob_key_candidates`)
no batch ``session_id`` key    a writer without the liveness-lock protocol
                               (:data:`LOCK_PROTOCOL_KEY`)
=============================  ======================================================
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = [
    "LOCK_PROTOCOL_KEY",
    "blob_key_candidates",
    "histogram_range",
    "normalize_mark",
    "normalize_snapshot",
    "resolve_blob_uri",
]

#: A batch that carries this top-level key (even as ``null``) comes from a writer that holds the
#: liveness lock of spec section 3 while it writes; one without it cannot prove it finished.
LOCK_PROTOCOL_KEY = "session_id"

_NONFINITE = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "infinity": math.inf, "-inf": -math.inf,
              "-infinity": -math.inf}
_VALUE_TYPES = {"string": "str", "boolean": "bool", "integer": "int", "double": "float"}


def normalize_mark(m: Any) -> None:
    """Map another writer's mark spellings onto ours, in place (record structs or dicts)."""
    vt = m.get("value_type")
    if type(vt) is str and vt in _VALUE_TYPES:
        m["value_type"] = vt = _VALUE_TYPES[vt]
    if vt == "float" and m.get("value") is None:
        token = m.get("value_nonfinite")
        if type(token) is str and token.strip().lower() in _NONFINITE:
            m["value"] = _NONFINITE[token.strip().lower()]


def histogram_range(hist: Any) -> None:
    """Give a histogram given as bin edges (``bins``) the ``min``/``max`` keys, in place."""
    if type(hist) is not dict or ("min" in hist and "max" in hist):
        return
    bins = hist.get("bins")
    if type(bins) is list and bins and all(type(b) in (int, float) for b in (bins[0], bins[-1])):
        hist.setdefault("min", bins[0])
        hist.setdefault("max", bins[-1])


def normalize_snapshot(sn: Any) -> None:
    """Map another writer's snapshot spellings onto ours, in place (record structs or dicts)."""
    if sn.get("tensor") is None and type(sn.get("tensor_name")) is str:
        sn["tensor"] = sn["tensor_name"]
    if "role" in sn and sn.get("role") is None and type(sn.get("tensor")) is str:
        sn["role"] = "gradient" if sn["tensor"].endswith(".grad") else "weight"
    stats = sn.get("stats")
    if type(stats) is dict:
        histogram_range(stats.get("histogram"))


def _inside(path: Path, root: Path) -> bool:
    try:
        return os.path.commonpath([str(path), str(root)]) == str(root)
    except ValueError:
        return False


def resolve_blob_uri(cirron_dir: str | os.PathLike[str], uri: Any) -> Path | None:
    """The file a snapshot's ``blob_uri`` names, confined to ``cirron_dir`` (the ``.cirron/``
    directory); ``None`` when it names anything outside it.

    A relative URI is relative to ``cirron_dir``. A ``file://`` URI (another writer's absolute
    form) is used when it lies inside ``cirron_dir``; when it does not (the spool was moved or
    copied), its ``snapshots/<span_id>/<file>`` tail is looked up under ``cirron_dir`` instead.
    Symlinks are resolved before the check, so a link cannot lead outside either.
    """
    if type(uri) is not str or not uri or "\x00" in uri:
        return None
    root = Path(os.path.realpath(cirron_dir))
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            return None
        path = Path(unquote(parts.path))
        real = Path(os.path.realpath(path))
        if _inside(real, root) and real != root:
            return real
        tail = path.parts[-3:]
        if len(tail) == 3 and tail[0] == "snapshots" and all(p not in ("", ".", "..") for p in tail):
            candidate = Path(os.path.realpath(root.joinpath(*tail)))
            return candidate if _inside(candidate, root) else None
        return None
    if parts.scheme:  # http://, s3://... : not a local blob
        return None
    if os.path.isabs(uri):
        return None
    real = Path(os.path.realpath(root / uri))
    return real if _inside(real, root) and real != root else None


def blob_key_candidates(tensor: str, blob_name: str | None = None) -> list[str]:
    """Keys to try for ``tensor`` in a safetensors blob: the name verbatim first; for a gradient
    (``.grad``) also the name without the suffix, as writers that key ``gradients.safetensors`` by
    the parameter name do."""
    out = [tensor]
    if tensor.endswith(".grad") and (blob_name is None or blob_name.startswith("gradients")):
        out.append(tensor[: -len(".grad")])
    return out
