"""``ci.load(name, *, source="local")``: a dataset by alias or path, loaded inside a ``load`` span.

Resolution of ``name`` (``source="local"``):

1. an alias in the ``data`` section of the project file (cirron.yaml). The entry is a path string,
   or a mapping with one of ``path``, ``local``, ``file`` or ``uri`` (a ``file://`` URI or a plain
   path). Relative paths are relative to the directory holding the project file;
2. otherwise ``name`` itself as a path (``~`` expanded, relative to the working directory).

What comes back depends on the suffix: ``.npy`` → ``numpy.ndarray``; ``.npz`` → ``dict`` of name →
array (read eagerly, the file is closed); ``.safetensors`` → ``dict`` of name → array (BF16/F8
upcast to float32); ``.parquet`` and ``.csv`` (also ``.csv.gz``/``.csv.bz2``) → ``pyarrow.Table``;
anything else, directories included → the resolved ``pathlib.Path``.

The span ``load`` carries ``dataset`` (the name as given), ``source`` and ``bytes`` (the file size,
or the total size of a directory's files).

**Remote data**: a URL (given directly, or as an alias's path/``uri``) with a scheme fsspec
knows — ``s3://``, ``gs://``/``gcs://``, ``az://``/``abfs://``, ``http(s)://`` — is read with
fsspec (and its backend: s3fs, gcsfs, adlfs; aiohttp for HTTP) and returned as the same types,
read through a temporary local copy that is removed afterwards. Credentials come from wherever the
backend looks (``AWS_*`` variables and ``~/.aws``, ``GOOGLE_APPLICATION_CREDENTIALS``,
``AZURE_STORAGE_*``; ``AWS_ENDPOINT_URL`` for S3-compatible stores). A remote object of another
type is returned as its URL. The span's ``source`` is the scheme and ``url`` the URL without
any user, password or query string.

``source="platform"`` needs platform credentials (``api_key`` and ``workspace_id``); without them
it raises :class:`~cirron.CirronConfigError`. Downloading from the platform is not part of this
SDK yet, so with credentials it raises :class:`~cirron.CirronError` saying so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cirron._errors import CirronConfigError, CirronError

__all__ = ["load", "resolve"]

SOURCES = ("local", "platform")
_PATH_KEYS = ("path", "local", "file", "uri")
_DIR_SIZE_LIMIT = 100_000  # files counted for a directory's ``bytes``


def _project_dir(cfg: Any) -> Path:
    pf = getattr(cfg, "project_file", None)
    return Path(pf).parent if pf else Path.cwd()


def _entry_path(name: str, entry: Any) -> str:
    if isinstance(entry, (str, os.PathLike)):
        return os.fspath(entry)
    if isinstance(entry, Mapping):
        for key in _PATH_KEYS:
            value = entry.get(key)
            if isinstance(value, str) and value:
                return value.removeprefix("file://") if key == "uri" else value
    raise CirronConfigError(
        f"dataset alias {name!r} in the project file's data section has no local path "
        f"(give a path string or one of: {', '.join(_PATH_KEYS)})"
    )


#: URL schemes read through fsspec, and the package each needs.
REMOTE_SCHEMES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
                  "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp"}


def remote_scheme(name: str) -> str | None:
    scheme, sep, _ = name.partition("://")
    return scheme.lower() if sep and scheme.lower() in REMOTE_SCHEMES else None


def public_url(url: str) -> str:
    """``url`` without user, password, query string or fragment (what may be written down)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def resolve(cfg: Any, name: str) -> Path | str:
    """The local path ``name`` stands for, or its URL when it is remote (see the module docstring)."""
    if not isinstance(name, (str, os.PathLike)) or not os.fspath(name):
        raise CirronConfigError(f"ci.load() needs a dataset alias or a path, got {name!r}")
    name = os.fspath(name)
    if remote_scheme(name):
        return name
    data = getattr(cfg, "project_data", None) or {}
    if name in data:
        raw = _entry_path(name, data[name])
        if raw.startswith("platform://"):
            raise CirronConfigError(
                f"dataset alias {name!r} points at {raw!r}, which the platform would serve; downloading from "
                "the platform is not supported by this SDK version: download it and point the alias at the copy"
            )
        if remote_scheme(raw):
            return raw  # type: ignore[return-value]
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = _project_dir(cfg) / path
        if not path.exists():
            raise CirronConfigError(f"dataset alias {name!r} points at {path}, which does not exist")
        return path
    path = Path(name).expanduser()
    if path.exists():
        return path
    known = ", ".join(sorted(map(str, data))) or "none declared"
    raise CirronConfigError(
        f"ci.load({name!r}): no such dataset alias in the project file's data section "
        f"(aliases: {known}) and no file at {path.resolve()}"
    )


def _size(path: Path) -> int:
    try:
        if path.is_file():
            return path.stat().st_size
        total = 0
        for i, p in enumerate(path.rglob("*")):
            if i >= _DIR_SIZE_LIMIT:
                break
            if p.is_file():
                total += p.stat().st_size
        return total
    except OSError:
        return 0


def _kind(path: Path) -> str | None:
    return None if path.is_dir() else _kind_of_name(path.name)


def _kind_of_name(name: str) -> str | None:
    suffixes = [s.lower() for s in Path(name).suffixes]
    last = suffixes[-1] if suffixes else ""
    if last in (".npy", ".npz", ".safetensors", ".parquet", ".csv"):
        return last
    if len(suffixes) >= 2 and suffixes[-2] == ".csv" and last in (".gz", ".bz2", ".zst", ".lz4"):
        return ".csv"
    return None


def _read(path: Path, kind: str | None) -> Any:
    from cirron._errors import require

    if kind is None:
        return path
    if kind in (".npy", ".npz"):
        np = require("numpy", "ci.load() of .npy/.npz files")
        if kind == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if kind == ".safetensors":
        require("numpy", "ci.load() of .safetensors files")
        from cirron import safetensors_io

        header = safetensors_io.read_header(path)
        return {t.name: safetensors_io.to_numpy(header, t) for t in header.tensors}
    if kind == ".parquet":
        pq = require("pyarrow.parquet", "ci.load() of .parquet files")
        return pq.read_table(path)
    pacsv = require("pyarrow.csv", "ci.load() of .csv files")
    return pacsv.read_csv(path)


def load(c: Any, name: str, *, source: str = "local") -> Any:
    """Implementation of :meth:`cirron.Cirron.load`."""
    if source not in SOURCES:
        raise CirronConfigError(f"ci.load(source={source!r}): expected one of {', '.join(SOURCES)}")
    cfg = getattr(c, "config", None) or c._config
    if source == "platform":
        missing = [k for k in ("api_key", "workspace_id") if not getattr(cfg, k, None)]
        if missing:
            raise CirronConfigError(
                f"ci.load({name!r}, source='platform') needs platform credentials; "
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set "
                "(pass them to Cirron(...), set CIRRON_API_KEY / CIRRON_WORKSPACE_ID, or run `cirron auth login`)"
            )
        raise CirronError(
            f"ci.load({name!r}, source='platform'): downloading datasets from the platform is not "
            "supported by this SDK version; download the data and use source='local'"
        )
    path = resolve(cfg, name)
    if isinstance(path, str):
        return _load_remote(c, os.fspath(name), path)
    with c.scope("load", dataset=os.fspath(name), source=source, bytes=_size(path)):
        return _read(path, _kind(path))


def _load_remote(c: Any, name: str, url: str) -> Any:
    """A remote object through fsspec: the same return types as a local file of its kind."""
    import tempfile

    from cirron._errors import CirronDependencyError, require

    scheme = remote_scheme(url) or ""
    fsspec = require("fsspec", f"ci.load() of {scheme}:// URLs", "remote")
    try:
        fs, fs_path = fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise CirronDependencyError(REMOTE_SCHEMES[scheme], f"ci.load() of {scheme}:// URLs", "remote") from exc
    shown = public_url(url)
    with c.scope("load", dataset=name if not remote_scheme(name) else shown, source=scheme, url=shown) as span:
        try:
            size = fs.size(fs_path)
        except FileNotFoundError:
            raise CirronConfigError(f"ci.load({shown!r}): no such object") from None
        except Exception as exc:  # noqa: BLE001 - credentials, network, permissions: each backend its own type
            raise CirronError(f"ci.load({shown!r}): {type(exc).__name__}: {exc}") from exc
        if span is not None and hasattr(span, "set_attr"):
            span.set_attr("bytes", int(size or 0))
        kind = _kind_of_name(shown.rsplit("/", 1)[-1])
        if kind is None:
            return url
        with tempfile.TemporaryDirectory(prefix="cirron-load-") as tmp:
            local = Path(tmp) / (shown.rsplit("/", 1)[-1] or "object")
            try:
                fs.get_file(fs_path, str(local))
            except Exception as exc:  # noqa: BLE001 - as above
                raise CirronError(f"ci.load({shown!r}): {type(exc).__name__}: {exc}") from exc
            return _read(local, kind)
