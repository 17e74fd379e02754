"""``cirron traces snapshots`` (list spans with snapshots) and ``cirron traces snapshot`` (inspect one).

Snapshot records come from the spool (:func:`cirron.spool.load_spool`); blobs are read with the
defensive reader in :mod:`cirron.safetensors_io`, which only ever seeks to and reads the bytes a
preview needs. Every failure is a one-line ``Error: …`` on stderr and exit code 1.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cirron import safetensors_io as st
from cirron._format import label_of
from cirron._schema import decode_float, encode_float
from cirron.spool import paths as spool_paths
from cirron.spool.tolerant import blob_key_candidates, resolve_blob_uri
from cirron_cli import render
from cirron_cli.render import fail, format_bytes, use_color, warn

if TYPE_CHECKING:
    from cirron.spool.catalog import Catalog

DEFAULT_SPOOL = str(spool_paths.DEFAULT_SPOOL_DIR)
BLOB_FILES = ("weights.safetensors", "gradients.safetensors")
HIST_CHARS = "▁▂▃▄▅▆▇█"


# --------------------------------------------------------------------------------------- helpers


def _spool_dirs(spools: list[str]) -> list[Path]:
    """The directories of the ``--spool`` values (globs expanded); at least one."""
    dirs = spool_paths.resolve_spools(spools, warn)
    return dirs or [Path(spools[0])]


def _open_spools(spools: list[str]) -> tuple[list[Path], Catalog]:
    """The directories of the ``--spool`` values and their catalog; one that is not a directory is refused."""
    from cirron.spool.catalog import open_catalog

    dirs = _spool_dirs(spools)
    for d in dirs:
        if d.exists() and not d.is_dir():
            fail(f"Spool path {d} is not a directory")
    return dirs, open_catalog(dirs, warn)


def _short(id_: str | None) -> str:
    return render.short_id(id_) if id_ else "-"


def _unique_prefix_len(ids: list[str], start: int = 8) -> int:
    """The shortest prefix length (from ``start``) that tells every id in ``ids`` apart."""
    longest = max((len(i) for i in ids), default=start)
    n = start
    while n < longest and len({i[:n] for i in ids}) < len(set(ids)):
        n += 4
    return n


def _short_span(id_: str, n: int) -> str:
    return id_ if len(id_) <= n else id_[:n] + "…"


def _shape(shape: Any) -> str:
    if isinstance(shape, (list, tuple)):
        return "[" + ",".join(str(d) for d in shape) + "]"
    return "?"


def _compact_exp(s: str) -> str:
    mant, _, exp = s.partition("e")
    sign = "-" if exp.startswith("-") else ""
    return f"{mant}e{sign}{exp.lstrip('+-').lstrip('0') or '0'}"


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        x = decode_float(v)
        return x if isinstance(x, float) else None
    return None


def fmt_stat(v: Any) -> str:
    """Table/summary number: six decimals, or five significant digits in e-notation when tiny or huge."""
    x = _num(v)
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(encode_float(x))
    if x == 0:
        return "0.000000"
    if abs(x) < 1e-3 or abs(x) >= 1e9:
        return _compact_exp(f"{x:.4e}")
    return f"{x:.6f}"


def fmt_value(v: Any) -> str:
    """A previewed value: integers exact, floats with four significant digits."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    x = float(v)
    if not math.isfinite(x):
        return str(encode_float(x))
    if x != 0 and abs(x) < 1e-3:
        return _compact_exp(f"{x:.3e}")
    s = f"{x:.4g}"
    return _compact_exp(s) if "e" in s else s


def fmt_edge(v: Any) -> str:
    x = _num(v)
    if x is None:
        return "?"
    if not math.isfinite(x):
        return fmt_stat(x)
    return _compact_exp(f"{x:.2e}")


def histogram_bar(counts: list[int]) -> str:
    top = max(counts) if counts else 0
    if top <= 0:
        return " " * len(counts)
    out = []
    for c in counts:
        if c <= 0:
            out.append(" ")
        else:
            out.append(HIST_CHARS[max(0, min(7, math.ceil(c * 8 / top) - 1))])
    return "".join(out)


def _clean_record(rec: dict) -> dict:
    from cirron._schema import SNAPSHOT_FIELDS, strict_json

    return strict_json({k: rec.get(k) for k in SNAPSHOT_FIELDS})


def _echo_json(doc: Any) -> None:
    from cirron._schema import strict_json

    typer.echo(json.dumps(strict_json(doc), indent=2, ensure_ascii=False))


def _hist_counts(stats: Any) -> tuple[list[int], Any, Any]:
    hist = stats.get("histogram") if isinstance(stats, dict) else None
    if not isinstance(hist, dict):
        return [], None, None
    counts = hist.get("counts")
    if not isinstance(counts, list):
        return [], None, None
    clean = [c if type(c) is int and c >= 0 else 0 for c in counts[:1024]]
    return clean, hist.get("min"), hist.get("max")


# --------------------------------------------------------------------------------------- snapshots


def snapshots_cmd(
    span_id: str | None = typer.Argument(None, help="Span id prefix (same as --span)."),
    session: str | None = typer.Option(None, "--session", help="Only this session (id prefix)."),
    span: str | None = typer.Option(None, "--span", help="Only this span (id prefix)."),
    spool: list[str] = typer.Option([DEFAULT_SPOOL], "--spool", show_default=True,
                                    help="Spool directory to read (repeatable; globs allowed)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON."),
) -> None:
    """Table of the spans that recorded weight/gradient snapshots."""
    dirs, cat = _open_spools(spool)
    if not cat.sessions:
        render.no_traces(err=True)
        raise typer.Exit(1)
    infos = cat.find(session) if session else cat.sessions
    if session and not infos:
        fail(f"No session found matching {session}")
    # Only sessions that recorded snapshots are read, one at a time (the index knows which).
    span_prefix = span or span_id
    if span and span_id and not span.startswith(span_id) and not span_id.startswith(span):
        fail(f"--span {span} and the positional span id {span_id} disagree")

    groups: dict[str, dict[str, Any]] = {}
    for sess in (i for i in infos if i.snapshots):
        records = [r for _i, r in cat.iter_snapshots([sess])]
        spans_by_id = cat.find_spans(sess, {r.get("span_id") for r in records if isinstance(r.get("span_id"), str)})
        for rec in records:
            sid = rec.get("span_id")
            if not isinstance(sid, str):
                continue
            if span_prefix and not sid.startswith(span_prefix):
                continue
            g = groups.get(sid)
            if g is None:
                sp = spans_by_id.get(sid)
                g = groups[sid] = {
                    "session_id": sess.id, "span_id": sid, "name": label_of(sp) if sp else "(unknown)",
                    "start_ns": sp.get("start_ns") if sp else None,
                    "tensors": 0, "modes": [], "with_blob": 0,
                }
            g["tensors"] += 1
            mode = rec.get("mode")
            if isinstance(mode, str) and mode not in g["modes"]:
                g["modes"].append(mode)
            if isinstance(rec.get("blob_uri"), str) and rec["blob_uri"]:
                g["with_blob"] += 1
    if span_prefix and not groups:
        fail(f"No snapshots found for span {span_prefix}")
    rows = sorted(groups.values(), key=lambda g: (g["start_ns"] if type(g["start_ns"]) is int else 0, g["span_id"]))
    if as_json:
        _echo_json({"dir": str(dirs[0].resolve()), "dirs": [str(d.resolve()) for d in dirs],
                    "spans": [dict(g, start_ns=render.json_ns(g["start_ns"])) for g in rows]})
        return
    n = len(rows)
    where = f"Spool: {dirs[0].resolve()}" if len(dirs) == 1 else f"Spools: {len(dirs)} directories"
    typer.echo(f"{where}  ({n} span{'' if n == 1 else 's'} with snapshots)")
    if not rows:
        typer.echo("No snapshots recorded. Wrap a model with ci.wrap() and loop with ci.epochs() to take some.")
        return
    width = _unique_prefix_len([g["span_id"] for g in rows])
    typer.echo(render.aligned_table(
        ["SESSION", "SPAN", "NAME", "TENSORS", "MODES", "WITH BLOB"],
        [[_short(g["session_id"]), _short_span(g["span_id"], width), g["name"], g["tensors"],
          ",".join(g["modes"]) or "-",
          g["with_blob"]] for g in rows],
        right=(3, 5),
    ))


# --------------------------------------------------------------------------------------- snapshot


def _candidate_files(
    spool_dir: Path, span_id: str, records: list[dict], file: Path | None
) -> tuple[list[Path], list[str]]:
    """The blob files to read for a span, and what is missing (one line each, already warned).

    Only regular files are used: a FIFO, device or socket where a blob should be is skipped
    with a warning (opening one could block forever)."""
    if file is not None:
        if not file.exists():
            fail(f"Snapshot blob not found: {file}")
        if not file.is_file():
            fail(f"Not a snapshot blob: {file} (not a regular file)")
        return [file.resolve()], []
    span_dir = spool_paths.snapshot_span_dir(spool_dir, span_id).resolve() if spool_paths.is_safe_id(span_id) else None
    cirron_dir = spool_paths.cirron_root(spool_dir)
    found: list[Path] = []
    missing: list[str] = []
    for rec in records:
        uri = rec.get("blob_uri")
        if not isinstance(uri, str) or not uri:
            continue
        p = resolve_blob_uri(cirron_dir, uri)
        if p is None:
            warn(f"ignoring blob_uri {uri[:120]!r}: it points outside {cirron_dir}")
            continue
        if p in found or str(p) in missing:
            continue
        if not p.exists():
            missing.append(str(p))
            warn(f"Snapshot blob not found: {p} (referenced by tensor {str(rec.get('tensor'))[:80]!r}); "
                 "showing the recorded stats only")
            continue
        if not p.is_file():
            missing.append(str(p))
            warn(f"skipping {p}: not a regular file")
            continue
        found.append(p)
    for name in BLOB_FILES:
        if span_dir is None:
            break
        p = span_dir / name
        if p.is_symlink():  # the SDK never writes one; it could point anywhere
            warn(f"skipping {p}: a symlink, not a snapshot blob")
            found = [f for f in found if f != p.resolve()]
            continue
        if p not in found and p.is_file():
            found.append(p)
    order = {name: i for i, name in enumerate(BLOB_FILES)}
    found.sort(key=lambda p: (order.get(p.name, len(order)), str(p)))
    return found, missing


def _read_headers(files: list[Path]) -> list[st.SafetensorsHeader]:
    try:
        return [st.read_header(f) for f in files]
    except st.SafetensorsError as exc:
        fail(str(exc))


def _file_json(h: st.SafetensorsHeader) -> dict:
    return {
        "path": str(h.path), "file_bytes": h.file_size, "data_bytes": h.data_bytes, "metadata": h.metadata,
        "tensors": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "bytes": t.nbytes} for t in h.tensors],
    }


def _pick_tensor(tensor: str, headers: list[st.SafetensorsHeader], record: dict | None,
                 span_id: str) -> tuple[st.SafetensorsHeader, st.TensorInfo] | None:
    for h in headers:
        for key in blob_key_candidates(tensor, h.path.name):
            info = h.get(key)
            if info is not None:
                return h, info
    if not headers:
        return None
    if record is not None and not isinstance(record.get("blob_uri"), str):
        return None  # stats-only record: the blob never existed
    # the file the tensor should have been in: gradients for ".grad", else the first one
    target = headers[0]
    if tensor.endswith(".grad"):
        target = next((h for h in headers if h.path.name == "gradients.safetensors"), target)
    names = ", ".join(target.names()) or "(none)"
    fail(f'Tensor "{tensor}" not found in {target.path}. Available: {names}')


def _dir_hint(raw: str) -> bool:
    """``out/`` names a directory even before it exists."""
    return raw.endswith(("/", os.sep))


def _export_dest_file(raw: str, tensor: str) -> Path:
    dest = Path(raw)
    if dest.is_dir():
        return dest / st.safe_filename(tensor)
    if _dir_hint(raw):
        _write_guard(lambda: dest.mkdir(parents=True, exist_ok=True), dest)
        return dest / st.safe_filename(tensor)
    return dest


def _write_guard(action: Any, dest: Path) -> Any:
    try:
        return action()
    except st.SafetensorsError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"Cannot write {dest}: {exc.strerror or exc}")


def _copy_atomic(src: Path, dest: Path) -> None:
    tmp = dest.parent / f".tmp-{os.getpid()}-{os.urandom(4).hex()}-{dest.name}"
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _export_blobs(headers: list[st.SafetensorsHeader], raw: str) -> list[Path]:
    if not headers:
        fail("No snapshot blobs on disk for this span (it was recorded in stats mode); nothing to export")
    dest = Path(raw)
    n = len(headers)
    if dest.exists():
        as_file = not dest.is_dir()
    elif _dir_hint(raw):
        as_file = False
    elif dest.name.endswith(".safetensors"):
        as_file = True
    elif n == 1 and not dest.suffix:
        as_file = True
    else:
        as_file = False
    if as_file and n > 1:
        kinds = ", ".join(h.path.name.removesuffix(".safetensors") for h in headers)
        typer.echo(
            f"Error: Destination {dest} is a single file but {n} blobs were found ({kinds}).\n"
            "Pass a directory, or narrow the selection with --file.",
            err=True,
        )
        raise typer.Exit(1)
    out: list[Path] = []
    if as_file:
        target = dest
        _write_guard(lambda: _copy_atomic(headers[0].path, target), target)
        out.append(target)
    else:
        _write_guard(lambda: dest.mkdir(parents=True, exist_ok=True), dest)
        for h in headers:
            target = dest / st.safe_filename(h.path.name.removesuffix(".safetensors"))
            _write_guard(lambda h=h, target=target: _copy_atomic(h.path, target), target)
            out.append(target)
    return out


def snapshot_cmd(
    span_id: str | None = typer.Argument(None, help="Span id (prefix allowed); optional with --file."),
    tensor: str | None = typer.Argument(None, help="Tensor name, verbatim (e.g. 2.weight)."),
    spool: list[str] = typer.Option([DEFAULT_SPOOL], "--spool", show_default=True,
                                    help="Spool directory to read (repeatable; globs allowed)."),
    file: Path | None = typer.Option(None, "--file", help="Read this safetensors file instead of the span's blobs."),
    preview: int | None = typer.Option(None, "--preview", min=0, help="Print the first N values of TENSOR."),
    tail: int | None = typer.Option(None, "--tail", min=0, help="Print the last N values of TENSOR."),
    export: str | None = typer.Option(None, "--export", help="Write TENSOR (or the span's blobs) to this path."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON."),
    no_color: bool = typer.Option(False, "--no-color", help="Disable ANSI colour."),
) -> None:
    """Inspect one span's snapshots: stats, safetensors headers, histogram, preview and export.

    With --file the span may be left out: the file's own metadata names it.
    """
    if file is not None and span_id is not None and tensor is None:
        # One argument beside --file: a tensor of that file, unless it is not one (then a span).
        if any(t.name == span_id for t in _read_headers([file])[0].tensors):
            span_id, tensor = None, span_id
    if span_id is None:
        if file is None:
            fail("Missing argument 'SPAN_ID' (or pass --file PATH to inspect a safetensors file)", 2)
        span_id = _read_headers([file])[0].metadata.get("span_id") or ""
    if (preview is not None or tail is not None) and tensor is None:
        fail("--preview/--tail need a tensor name: cirron traces snapshot <span> <tensor> --preview N")
    dirs, cat = _open_spools(spool)
    # Only sessions the index counts snapshots in are read, one batch file at a time.
    by_spool = {d: cat.spool_snapshots(d) for d in cat.spools}
    # The spool holding snapshots of this span (the first one given when none does).
    spool_dir = next((d for d in cat.spools
                      if any(isinstance(r.get("span_id"), str) and r["span_id"].startswith(span_id)
                             for _i, r in by_spool.get(d, ()))), cat.spools[0] if cat.spools else dirs[0])
    pairs = by_spool.get(spool_dir, [])
    if not pairs and not any(s.spool == spool_dir for s in cat.sessions) and file is None:
        render.no_traces(err=True)
        raise typer.Exit(1)

    by_span: dict[str, list[dict]] = {}
    owner: dict[str, Any] = {}
    for rec_info, rec in pairs:
        sid = rec.get("span_id")
        if isinstance(sid, str):
            by_span.setdefault(sid, []).append(rec)
            if rec_info is not None:
                owner.setdefault(sid, rec_info)
    matches = sorted(s for s in by_span if s.startswith(span_id)) if span_id else []
    if len(matches) > 1 and span_id not in by_span:
        shown = ", ".join(_short(m) for m in matches[:5])
        fail(f"Span id {span_id} is ambiguous: it matches {len(matches)} spans ({shown})")
    if matches:
        full_id = span_id if span_id in by_span else matches[0]
    elif file is not None:
        full_id = span_id
    else:
        fail(f"No snapshots found for span {span_id}")
    records = by_span.get(full_id, [])
    records.sort(key=lambda r: 0 if r.get("role") != "gradient" else 1)  # stable: weights first
    owner_info = owner.get(full_id)
    span_rec = cat.find_spans(owner_info, {full_id}).get(full_id) if owner_info is not None else None
    session_id = owner_info.id if owner_info is not None else None
    if session_id is None and records:
        session_id = records[0].get("batch_session")

    files, missing = _candidate_files(spool_dir, full_id, records, file)
    headers = _read_headers(files)
    if missing and (export is not None or preview is not None or tail is not None):
        fail(f"Snapshot blob not found: {missing[0]}")
    color = use_color(no_color)

    record = None
    picked: tuple[st.SafetensorsHeader, st.TensorInfo] | None = None
    if tensor is not None:
        record = next((r for r in records if r.get("tensor") == tensor), None)
        blob = resolve_blob_uri(spool_paths.cirron_root(spool_dir), record.get("blob_uri")) if record else None
        picked = None if blob is not None and str(blob) in missing else _pick_tensor(tensor, headers, record, full_id)
        if record is None and picked is None:
            names = ", ".join(str(r.get("tensor")) for r in records) or "(none)"
            fail(f'Tensor "{tensor}" not found in span {full_id}. Available: {names}')
        if (preview or tail) and picked is None:
            mode = record.get("mode") if record else "?"
            fail(f'Tensor "{tensor}" has no blob on disk (mode={mode}); nothing to preview')

    first: list[Any] = []
    last: list[Any] = []
    if picked is not None:
        h, info = picked
        try:
            if preview:
                first = st.read_values(h, info, 0, preview)
            if tail:
                last = st.read_values(h, info, info.numel - tail, tail)
        except st.SafetensorsError as exc:
            fail(str(exc))

    exported: list[Path] = []
    if export is not None:
        if tensor is not None:
            if picked is None:
                fail(f'Tensor "{tensor}" has no blob on disk; nothing to export')
            h, info = picked
            target = _export_dest_file(export, tensor)
            meta = dict(h.metadata)
            _write_guard(lambda: st.export_tensor(h, info, target, meta), target)
            exported.append(target)
        else:
            exported = _export_blobs(headers, export)

    if as_json:
        doc: dict[str, Any] = {
            "span_id": full_id, "name": label_of(span_rec) if span_rec else None, "session_id": session_id,
            "records": [_clean_record(r) for r in records], "files": [_file_json(h) for h in headers],
        }
        if tensor is not None:
            t: dict[str, Any] = {"name": tensor, "record": _clean_record(record) if record else None, "blob": None}
            if picked is not None:
                h, info = picked
                t["blob"] = {"path": str(h.path), "dtype": info.dtype, "shape": list(info.shape), "bytes": info.nbytes}
                if preview is not None:
                    t["first"] = first
                if tail is not None:
                    t["last"] = last
            doc["tensor"] = t
        if exported:
            doc["exported"] = [str(p) for p in exported]
        _echo_json(doc)
        return

    bold = (lambda s: f"\x1b[1m{s}\x1b[0m") if color else (lambda s: s)
    typer.echo(f"{bold('Span')}     {full_id or '-'}")
    typer.echo(f"{bold('Name')}     {label_of(span_rec) if span_rec else '(unknown)'}")
    typer.echo(f"{bold('Session')}  {session_id or '-'}")
    typer.echo(f"{bold('Records')}  {len(records)} snapshot record{'' if len(records) == 1 else 's'}")
    typer.echo("")

    if tensor is None:
        if records:
            typer.echo(render.aligned_table(
                ["TENSOR", "DTYPE", "SHAPE", "MEAN", "STD", "NORM", "MODE"],
                [[r.get("tensor"), r.get("dtype") or "?", _shape(r.get("shape")),
                  fmt_stat((r.get("stats") or {}).get("mean") if isinstance(r.get("stats"), dict) else None),
                  fmt_stat((r.get("stats") or {}).get("std") if isinstance(r.get("stats"), dict) else None),
                  fmt_stat((r.get("stats") or {}).get("norm") if isinstance(r.get("stats"), dict) else None),
                  r.get("mode") or "-"] for r in records],
                right=(3, 4, 5),
            ))
        if not headers:
            typer.echo("")
            typer.echo("No blobs on disk for this span (stats only).")
        for h in headers:
            typer.echo("")
            n = len(h.tensors)
            typer.echo(f"{h.path.name}  ({n} tensor{'' if n == 1 else 's'}, {format_bytes(h.data_bytes)}, "
                       f"file={format_bytes(h.file_size)})")
            typer.echo(render.aligned_table(
                ["NAME", "DTYPE", "SHAPE", "BYTES"],
                [[t.name, t.dtype, _shape(t.shape), format_bytes(t.nbytes)] for t in h.tensors],
                right=(3,),
            ))
    else:
        if record is not None:
            stats = record.get("stats") if isinstance(record.get("stats"), dict) else {}
            shape = _shape(record.get("shape"))
            typer.echo(f"{bold('Tensor')}   {tensor}  ({record.get('dtype') or '?'}, shape={shape}, "
                       f"mode={record.get('mode') or '-'})")
            for key, label in (("mean", "mean"), ("std", "std "), ("min", "min "), ("max", "max "), ("norm", "norm")):
                typer.echo(f"  {label} = {fmt_stat(stats.get(key))}")
            for key in ("nan_count", "inf_count"):
                v = stats.get(key)
                if type(v) is int and v:
                    typer.echo(f"  {key} = {v}")
            counts, lo, hi = _hist_counts(stats)
            if counts:
                bar = histogram_bar(counts)
                if color:
                    bar = f"\x1b[36m{bar}\x1b[0m"
                typer.echo("")
                typer.echo(f"  histogram: {bar}  [{fmt_edge(lo)} … {fmt_edge(hi)}]  max_bucket={max(counts)}")
        else:
            typer.echo(f"{bold('Tensor')}   {tensor}  (no snapshot record; blob only)")
        if picked is not None:
            h, info = picked
            typer.echo("")
            typer.echo(f"{bold('Blob')}     {h.path}")
            typer.echo(f"  dtype={info.dtype} shape={_shape(info.shape)} bytes={info.nbytes}")
            if preview is not None:
                typer.echo(f"  first {preview}: [{', '.join(fmt_value(v) for v in first)}]")
            if tail is not None:
                typer.echo(f"  last  {tail}: [{', '.join(fmt_value(v) for v in last)}]")
        elif record is not None:
            typer.echo("")
            typer.echo("Blob     none (stats only for this snapshot)")
    for p in exported:
        typer.echo(f"Exported {p} ({format_bytes(p.stat().st_size)})")


def register(traces_app: typer.Typer) -> None:
    traces_app.command("snapshots")(snapshots_cmd)
    traces_app.command("snapshot")(snapshot_cmd)
