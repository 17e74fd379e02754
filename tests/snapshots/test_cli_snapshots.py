from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from snapshot_helpers import write_snapshot_session
from typer.testing import CliRunner

from cirron import safetensors_io as st
from cirron_cli.app import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def _model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.uniform(-0.25, 0.25, (32, 16)).astype(np.float32)
    return {
        "0.weight": w,
        "0.bias": rng.standard_normal(32).astype(np.float32),
        "2.weight": rng.standard_normal((16, 32)).astype(np.float32),
        "0.weight.grad": (w * 0.01).astype(np.float32),
    }


@pytest.fixture
def demo(factory):
    info = write_snapshot_session(factory, [_model(0), _model(1), _model(2)], mode="full")
    info["spool"] = str(factory.spool_dir)
    info["factory"] = factory
    return info


def test_snapshots_table(demo) -> None:
    r = run("traces", "snapshots", "--spool", demo["spool"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].endswith("(3 spans with snapshots)")
    assert "│ NAME     │ TENSORS │ MODES │ WITH BLOB │" in r.output
    # the factory's ids share long prefixes, so the SPAN column shows as much as tells them apart
    from cirron_cli.snapshots import _short_span, _unique_prefix_len

    short = _short_span(demo["epochs"][0], _unique_prefix_len(demo["epochs"]))
    assert f"│ {short} │ epoch[0] │       4 │ full  │         4 │" in r.output
    # positional span prefix and --span agree
    r2 = run("traces", "snapshots", demo["epochs"][1], "--spool", demo["spool"])
    assert r2.exit_code == 0 and "epoch[1]" in r2.output and "epoch[0]" not in r2.output
    r3 = run("traces", "snapshots", "--session", demo["root"][:10], "--spool", demo["spool"], "--json")
    doc = json.loads(r3.output)
    assert [g["name"] for g in doc["spans"]] == ["epoch[0]", "epoch[1]", "epoch[2]"]
    assert doc["spans"][0]["with_blob"] == 4 and doc["spans"][0]["modes"] == ["full"]
    # timestamps as every other --json writes them: decimal strings
    assert all(isinstance(g["start_ns"], str) and int(g["start_ns"]) > 0 for g in doc["spans"])


def test_snapshots_errors(demo, tmp_path: Path) -> None:
    r = run("traces", "snapshots", "--session", "ffffff", "--spool", demo["spool"])
    assert r.exit_code == 1
    assert r.output.strip() == "Error: No session found matching ffffff"
    empty = run("traces", "snapshots", "--spool", str(tmp_path / "nothing"))
    assert empty.exit_code == 1
    assert "No traces found. Run ci.profile() from Python to produce some." in empty.output
    assert "Traceback" not in empty.output


def test_span_summary(demo) -> None:
    eid = demo["epochs"][0]
    r = run("traces", "snapshot", eid, "--spool", demo["spool"])
    assert r.exit_code == 0, r.output
    out = r.output
    assert out.startswith(f"Span     {eid}\nName     epoch[0]\nSession  {demo['root']}\nRecords  4 snapshot records\n")
    assert "│ TENSOR        │ DTYPE │ SHAPE   │" in out
    assert "│ 0.weight.grad │ F32   │ [32,16] │" in out
    assert out.count("weights.safetensors  (3 tensors,") == 1
    assert "gradients.safetensors  (1 tensor," in out
    assert "│ 0.weight │ F32   │ [32,16] │ 2.00 KB │" in out


def test_focused_view_preview_and_tail(demo) -> None:
    eid = demo["epochs"][0]
    w = _model(0)["2.weight"].reshape(-1)
    r = run("traces", "snapshot", eid, "2.weight", "--preview", "3", "--tail", "2", "--spool", demo["spool"], "--no-color")
    assert r.exit_code == 0, r.output
    out = r.output
    assert "Tensor   2.weight  (F32, shape=[16,32], mode=full)" in out
    assert "  mean = " in out and "  norm = " in out
    hist = next(line for line in out.splitlines() if "histogram:" in line)
    bar = hist.split("histogram: ")[1].split("  [")[0]
    assert len(bar) == 16 and "█" in bar and set(bar) <= set("▁▂▃▄▅▆▇█ ")
    assert "max_bucket=" in hist and "…" in hist
    assert "  dtype=F32 shape=[16,32] bytes=2048" in out
    first = next(line for line in out.splitlines() if line.startswith("  first 3:"))
    vals = [float(x) for x in first.split("[")[1].rstrip("]").split(", ")]
    assert vals == pytest.approx(w[:3].tolist(), rel=1e-3)
    last = next(line for line in out.splitlines() if line.startswith("  last  2:"))
    assert [float(x) for x in last.split("[")[1].rstrip("]").split(", ")] == pytest.approx(w[-2:].tolist(), rel=1e-3)
    j = json.loads(run("traces", "snapshot", eid, "2.weight", "--preview", "3", "--spool", demo["spool"], "--json").output)
    assert j["tensor"]["first"] == pytest.approx(w[:3].tolist())
    assert j["tensor"]["record"]["stats"]["numel"] == 512


def test_tensor_not_found(demo) -> None:
    eid = demo["epochs"][0]
    r = run("traces", "snapshot", eid, "9.weight", "--spool", demo["spool"])
    assert r.exit_code == 1
    path = Path(demo["spool"]).parent / "snapshots" / eid / "weights.safetensors"
    assert r.output.strip() == f'Error: Tensor "9.weight" not found in {path.resolve()}. Available: 0.weight, 0.bias, 2.weight'


def test_export_rules(demo, tmp_path: Path) -> None:
    eid, spool = demo["epochs"][1], demo["spool"]
    # tensor → explicit file
    dest = tmp_path / "one.safetensors"
    r = run("traces", "snapshot", eid, "2.weight", "--export", str(dest), "--spool", spool)
    assert r.exit_code == 0, r.output
    h = st.read_header(dest)
    assert h.names() == ["2.weight"] and h.metadata["span_id"] == eid
    np.testing.assert_array_equal(st.to_numpy(h, h.tensors[0]), _model(1)["2.weight"])
    # tensor → existing dir
    d = tmp_path / "dir"
    d.mkdir()
    assert run("traces", "snapshot", eid, "0.weight.grad", "--export", str(d), "--spool", spool).exit_code == 0
    assert (d / "0.weight.grad.safetensors").is_file()
    # no tensor, two blobs, a .safetensors path → ambiguity
    r = run("traces", "snapshot", eid, "--export", str(tmp_path / "all.safetensors"), "--spool", spool)
    assert r.exit_code == 1
    assert r.output == (f"Error: Destination {tmp_path / 'all.safetensors'} is a single file but 2 blobs were found "
                        "(weights, gradients).\nPass a directory, or narrow the selection with --file.\n")
    # no tensor, two blobs, no extension → directory
    r = run("traces", "snapshot", eid, "--export", str(tmp_path / "out"), "--spool", spool)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gradients.safetensors", "weights.safetensors"]
    # --file narrows to one blob; no extension → a file
    wfile = Path(spool).parent / "snapshots" / eid / "weights.safetensors"
    r = run("traces", "snapshot", eid, "--file", str(wfile), "--export", str(tmp_path / "single"), "--spool", spool)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "single").is_file() and st.read_header(tmp_path / "single").names() == ["0.weight", "0.bias", "2.weight"]
    # an existing file with two blobs → ambiguity
    r = run("traces", "snapshot", eid, "--export", str(dest), "--spool", spool)
    assert r.exit_code == 1 and "is a single file but 2 blobs" in r.output
    # unwritable destination
    r = run("traces", "snapshot", eid, "2.weight", "--export", str(tmp_path / "no" / "such" / "x.safetensors"), "--spool", spool)
    assert r.exit_code == 1 and r.output.startswith("Error: Cannot write") and "Traceback" not in r.output


def test_hostile_tensor_names_stay_inside_the_destination(factory, tmp_path: Path) -> None:
    names = {"../../evil": np.ones(2, np.float32), "a/b\x00c": np.zeros(3, np.float32), "..": np.ones(1, np.float32)}
    info = write_snapshot_session(factory, [names], mode="full")
    out = tmp_path / "exp"
    out.mkdir()
    for name in names:
        r = run("traces", "snapshot", info["epochs"][0], name, "--export", str(out), "--spool", str(factory.spool_dir))
        assert r.exit_code == 0, r.output
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 3
    assert all(p.parent == out for p in out.iterdir())
    assert not (tmp_path / "evil.safetensors").exists()


def test_every_dtype_previews(factory, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    tensors = {
        "f64": torch.tensor([1.5, -2.0], dtype=torch.float64), "f32": torch.tensor([0.25], dtype=torch.float32),
        "f16": torch.tensor([0.5, 65504.0], dtype=torch.float16), "bf16": torch.tensor([3.0, -1.0], dtype=torch.bfloat16),
        "i64": torch.tensor([2**63 - 1, -(2**63)], dtype=torch.int64), "i32": torch.tensor([-5], dtype=torch.int32),
        "i16": torch.tensor([-300], dtype=torch.int16), "i8": torch.tensor([-128], dtype=torch.int8),
        "u64": torch.tensor([2**63 + 5], dtype=torch.uint64), "u32": torch.tensor([2**32 - 1], dtype=torch.uint32),
        "u16": torch.tensor([65535], dtype=torch.uint16), "u8": torch.tensor([255], dtype=torch.uint8),
        "b": torch.tensor([True, False]), "e4": torch.tensor([0.5], dtype=torch.float8_e4m3fn),
        "e5": torch.tensor([-2.0], dtype=torch.float8_e5m2),
    }
    info = write_snapshot_session(factory, [tensors], mode="full")
    expect = {"f64": "[1.5, -2]", "f32": "[0.25]", "f16": "[0.5, 6.55e4]", "bf16": "[3, -1]",
              "i64": f"[{2**63 - 1}, {-(2**63)}]", "i32": "[-5]", "i16": "[-300]", "i8": "[-128]",
              "u64": f"[{2**63 + 5}]", "u32": f"[{2**32 - 1}]", "u16": "[65535]", "u8": "[255]",
              "b": "[true, false]", "e4": "[0.5]", "e5": "[-2]"}
    for name, want in expect.items():
        r = run("traces", "snapshot", info["epochs"][0], name, "--preview", "5", "--spool", str(factory.spool_dir))
        assert r.exit_code == 0, (name, r.output)
        assert f"  first 5: {want}" in r.output, (name, r.output)


@pytest.mark.parametrize("damage", ["truncate", "lying_header", "missing", "garbage"])
def test_damaged_blobs_are_one_line_errors(demo, damage) -> None:
    eid = demo["epochs"][2]
    path = Path(demo["spool"]).parent / "snapshots" / eid / "weights.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:-100])
    elif damage == "lying_header":
        path.write_bytes(struct.pack("<Q", 10**9) + data[8:])
    elif damage == "missing":
        path.unlink()
    else:
        path.write_bytes(b"\x00" * 3)
    for args in ([eid], [eid, "0.weight", "--preview", "4"], [eid, "--json"]):
        r = run("traces", "snapshot", *args, "--spool", demo["spool"])
        if damage == "missing" and "--preview" not in args:
            # a missing blob: the recorded stats plus a warning; only value reads fail
            assert r.exit_code == 0, (args, r.output)
            assert "Warning: Snapshot blob not found" in r.output and "0.weight" in r.output
            continue
        assert r.exit_code == 1, (damage, args, r.output)
        errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "Traceback" not in r.output, r.output


def test_stats_only_span(factory) -> None:
    info = write_snapshot_session(factory, [{"w": np.array([1.0, np.nan, 3.0], dtype=np.float32)}], mode="stats")
    rec = info["records"][0]
    assert rec["blob_uri"] is None and rec["stats"]["mean"] == "NaN"
    sp = str(factory.spool_dir)
    r = run("traces", "snapshot", info["epochs"][0], "--spool", sp)
    assert r.exit_code == 0 and "No blobs on disk" in r.output and "│ w      │ F32   │ [3]   │  NaN │" in r.output
    r = run("traces", "snapshot", info["epochs"][0], "w", "--spool", sp)
    assert r.exit_code == 0 and "mean = NaN" in r.output and "nan_count = 1" in r.output
    r = run("traces", "snapshot", info["epochs"][0], "w", "--preview", "2", "--spool", sp)
    assert r.exit_code == 1 and "no blob" in r.output
    r = run("traces", "snapshot", info["epochs"][0], "zz", "--spool", sp)
    assert r.exit_code == 1 and r.output.startswith('Error: Tensor "zz" not found in span') and "Available: w" in r.output
    r = run("traces", "snapshot", "ffff", "--spool", sp)
    assert r.exit_code == 1 and r.output.strip() == "Error: No snapshots found for span ffff"


def test_preview_needs_a_tensor(demo) -> None:
    r = run("traces", "snapshot", demo["epochs"][0], "--preview", "3", "--spool", demo["spool"])
    assert r.exit_code == 1 and r.output.startswith("Error:")


def test_blob_uri_outside_the_cirron_dir_is_ignored(factory, tmp_path: Path) -> None:
    info = write_snapshot_session(factory, [{"w": np.ones(2, np.float32)}], mode="stats")
    rec = dict(info["records"][0], id=new_hex(), blob_uri="../../../../etc/passwd")
    factory.write_batch([], [], [rec], session_id=info["root"])
    r = run("traces", "snapshot", info["epochs"][0], "--spool", str(factory.spool_dir))
    assert r.exit_code == 0 and "points outside" in r.output


def new_hex() -> str:
    import os

    return os.urandom(16).hex()


def test_span_column_shortens_random_ids() -> None:
    from cirron_cli.snapshots import _short_span, _unique_prefix_len

    ids = ["f948038257e64867b6557edfd699a210", "5385ac83aa", "912b0397ff"]
    n = _unique_prefix_len(ids)
    assert n == 8 and _short_span(ids[0], n) == "f9480382…"
    same = ["1fb578df59777bc60000000000000002", "1fb578df59777bc6000000000000001a"]
    assert _unique_prefix_len(same) == 32


def test_trailing_slash_means_directory(demo, tmp_path: Path) -> None:
    eid, spool = demo["epochs"][0], demo["spool"]
    r = run("traces", "snapshot", eid, "0.bias", "--export", f"{tmp_path}/fresh/", "--spool", spool)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "fresh" / "0.bias.safetensors").is_file()
    wfile = Path(spool).parent / "snapshots" / eid / "weights.safetensors"
    r = run("traces", "snapshot", eid, "--file", str(wfile), "--export", f"{tmp_path}/one/", "--spool", spool)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "one" / "weights.safetensors").is_file()


def test_garbage_records_do_not_crash(factory) -> None:
    info = write_snapshot_session(factory, [{"w": np.ones(3, np.float32)}], mode="stats")
    eid = info["epochs"][0]
    junk = [
        {"id": new_hex(), "span_id": eid, "tensor": 123, "role": None, "dtype": 5, "shape": "x", "mode": 7,
         "stats": "nope", "blob_uri": 42},
        {"id": new_hex(), "span_id": eid, "tensor": "h", "stats": {"mean": "Infinity", "histogram": {"counts": "x"}}},
        {"id": new_hex(), "span_id": eid, "tensor": "g", "stats": {"histogram": {"counts": [1, -5, "a", 3.5]}},
         "blob_uri": "\x00/../x"},
        {"id": new_hex(), "span_id": None},
    ]
    factory.write_batch([], [], junk, session_id=info["root"])
    sp = str(factory.spool_dir)
    for args in (["snapshots"], ["snapshots", "--json"], ["snapshot", eid], ["snapshot", eid, "--json"],
                 ["snapshot", eid, "h"], ["snapshot", eid, "g"], ["snapshot", eid, "123"]):
        r = run("traces", *args, "--spool", sp)
        assert ("Traceback" not in r.output and r.exception is None) or isinstance(r.exception, SystemExit), (args, r.output)
        assert r.exit_code in (0, 1), (args, r.output)
    r = run("traces", "snapshot", eid, "h", "--spool", sp)
    assert "mean = Infinity" in r.output


def test_symlinked_blob_is_not_followed(demo, tmp_path: Path) -> None:
    eid = demo["epochs"][0]
    blob = Path(demo["spool"]).parent / "snapshots" / eid / "gradients.safetensors"
    secret = tmp_path / "secret.safetensors"
    blob.rename(secret)
    blob.symlink_to(secret)
    r = run("traces", "snapshot", eid, "--spool", demo["spool"])
    assert "a symlink" in r.output and "gradients.safetensors  (" not in r.output


def test_snapshot_of_a_session_without_spans_names_its_batch_session(factory) -> None:
    """Snapshots whose session has no span on disk still say which session's batch held them."""
    span_id = new_hex()
    rec = dict(factory.snapshot(span_id, mode="stats"), blob_uri=None)
    factory.write_batch([], [], [rec], session_id="5e55" * 8)
    r = run("traces", "snapshot", span_id[:12], "--json", "--spool", str(factory.spool_dir))
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["session_id"] == "5e55" * 8


def test_snapshot_file_without_a_span(demo, tmp_path: Path) -> None:
    import numpy as np

    from cirron import safetensors_io as st

    blob = next(Path(demo["spool"]).parent.joinpath("snapshots").rglob("weights.safetensors"))
    h = st.read_header(blob)
    name = h.tensors[0].name
    r = run("traces", "snapshot", "--file", str(blob), name, "--preview", "2", "--spool", demo["spool"], "--no-color")
    assert r.exit_code == 0, r.output
    assert f"Span     {h.metadata['span_id']}" in r.output and "first 2:" in r.output  # named by the file
    foreign = tmp_path / "other.safetensors"
    st.write_file(foreign, [("a", "F32", [3], np.ones(3, dtype=np.float32).tobytes())])
    r = run("traces", "snapshot", "--file", str(foreign), "a", "--preview", "3", "--spool", str(tmp_path / "none"),
            "--no-color")
    assert r.exit_code == 0, r.output
    assert "Span     -" in r.output and "first 3: [1, 1, 1]" in r.output
    r = run("traces", "snapshot", "--spool", demo["spool"])
    assert r.exit_code == 2 and "Missing argument 'SPAN_ID'" in r.output


def test_snapshot_commands_read_only_the_files_of_sessions_with_snapshots(factory, monkeypatch) -> None:
    """The index says which sessions hold snapshots: the batch files of the others are never read."""
    from cirron.spool import reader as spool_reader
    from cirron.spool import sessions as spool_sessions
    from cirron.spool.catalog import open_catalog

    plain = [factory.session(start_ns=10**18 + i * 10**9) for i in range(3)]
    with_snaps = factory.session(start_ns=2 * 10**18, snapshots=True)
    for eid in with_snaps["epochs"]:
        st.write_file(factory.snapshots_dir / eid / "weights.safetensors", [("w", "F32", [1], b"\0" * 4)],
                      {"span_id": eid}, fsync=False)
    sp = str(factory.spool_dir)
    open_catalog([sp]).sessions  # noqa: B018  (builds the index)
    read: list[str] = []
    real = spool_reader.read_batch

    def counting(bf, *a, **k):
        read.append(bf.name)
        return real(bf, *a, **k)

    monkeypatch.setattr(spool_reader, "read_batch", counting)
    monkeypatch.setattr(spool_sessions, "read_batch", counting)
    eid = with_snaps["epochs"][0]
    for args in (["snapshots", "--json"], ["snapshot", eid, "--json"]):
        read.clear()
        r = run("traces", *args, "--spool", sp)
        assert r.exit_code == 0, r.output
        assert eid in r.output
        assert read and all(name in {bf.name for bf in factory.spool_dir.glob("*.json")} for name in read)
        plain_files = {f.name for s in open_catalog([sp]).sessions if s.id in {p["root"] for p in plain}
                       for f in s.files}
        assert not plain_files & set(read)
    r = run("traces", "snapshot", eid, "--json", "--spool", sp)
    assert json.loads(r.output)["session_id"] == with_snaps["root"]
    assert json.loads(r.output)["name"] == "epoch[0]"
