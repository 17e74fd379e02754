"""Benchmark every `cirron traces` / `cirron spool` command on large spools, side by side with DuckDB.

For each size (default 0.1M and 1M spans, with as many marks, in batch files of 5,000 spans;
``--10m`` adds 10M) a spool of 4 sessions is generated, then each command runs as a subprocess
under ``/usr/bin/time -v``: wall time, CPU time and peak RSS. The peer is DuckDB at its best:
``read_json`` of the same files with explicit column types into a temporary table, then ``COPY``
of the unnested spans and of the unnested marks to Parquet (and the same with a dedupe by id, so
the work equals cirron's). A multi-spool case follows: 8 spools, one rank each, of one run.

    python bench/bench_cli.py                       # 0.1M and 1M
    python bench/bench_cli.py --sizes 100000        # quick
    python bench/bench_cli.py --10m                 # adds 10M (about 5 GB of spool, long)
    python bench/bench_cli.py --dir /tmp/b --keep   # reuse/keep the generated spools

Targets (issue 19): every command at 1M peaks at <= 300 MB RSS and takes no longer than the
DuckDB peer; `traces list` <= 0.5 s with a warm index; `spool list` grows linearly with the spool
(warm: no batch file read).
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
CIRRON = [sys.executable, "-m", "cirron_cli.app"]
BASE_NS = 1_776_486_598_051_509_000


def generate(spool_dir: Path, n_spans: int, n_marks: int, n_files: int, n_sessions: int = 4, *, rank: int = 0,
             world_size: int = 1, run_id: str | None = None, slow: float = 1.0) -> None:
    """Sessions → epochs → batches → data_load/forward/backward leaves; loss marks on the spans of
    each file. ``slow`` stretches data loading (and so the batches) of this rank."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    per_file_spans = n_spans // n_files
    per_file_marks = n_marks // n_files
    files_per_session = max(1, n_files // n_sessions)
    rnd = os.urandom
    t = BASE_NS
    created = BASE_NS
    session_id = None
    epoch_id = None
    step_id = None
    for f in range(n_files):
        spans = []
        marks = []
        if f % files_per_session == 0:
            session_id = rnd(16).hex()
            spans.append({"id": session_id, "parent_id": None, "name": "cirron.session", "index": None,
                          "start_ns": t, "end_ns": t + 10**12, "cpu_ns": None, "gpu_ns": None,
                          "memory_peak_bytes": None, "thread_id": 1, "pid": 1000 + f, "rank": rank,
                          "attrs": {"sdk_version": "0.1.0", "rank": rank, "world_size": world_size,
                                    "run_id": run_id or f"run-{session_id}", "host": "bench"}})
            epoch_id = None
        k = 0
        while len(spans) < per_file_spans:
            if epoch_id is None or k % 1000 == 0:
                epoch_id = rnd(16).hex()
                spans.append({"id": epoch_id, "parent_id": session_id, "name": "epoch", "index": k // 1000,
                              "start_ns": t, "end_ns": t + 3_000_000_000, "cpu_ns": 1, "gpu_ns": None,
                              "memory_peak_bytes": None, "thread_id": 1, "pid": 1000, "rank": 0, "attrs": {}})
            step_id = rnd(16).hex()
            load_ns = int(500_000 * slow)
            spans.append({"id": step_id, "parent_id": epoch_id, "name": "batch", "index": k, "start_ns": t,
                          "end_ns": t + 2_500_000 + load_ns, "cpu_ns": 2_000_000, "gpu_ns": None,
                          "memory_peak_bytes": 1 << 20, "thread_id": 1, "pid": 1000, "rank": rank,
                          "attrs": {"batch_size": 32}})
            for name, dur in (("data_load", load_ns), ("forward", 1_000_000), ("backward", 1_500_000)):
                if len(spans) >= per_file_spans:
                    break
                spans.append({"id": rnd(16).hex(), "parent_id": step_id, "name": name, "index": None,
                              "start_ns": t + 10, "end_ns": t + 10 + dur, "cpu_ns": dur * 9 // 10, "gpu_ns": None,
                              "memory_peak_bytes": None, "thread_id": 1, "pid": 1000, "rank": rank, "attrs": {}})
            t += 2_500_000 + load_ns
            k += 1
        span_ids = [s["id"] for s in spans]
        for j in range(per_file_marks):
            marks.append({"id": rnd(16).hex(), "span_id": span_ids[j % len(span_ids)], "name": "loss",
                          "value": 1.0 / (j + 1), "value_type": "float", "kind": "point", "ts_ns": t + j,
                          "thread_id": 1, "attrs": {"step": j}})
        created += 1_000_000
        batch_id = rnd(16).hex()
        doc = {"schema_version": 1, "sdk_version": "0.1.0", "batch_id": batch_id, "created_ns": created,
               "session_id": session_id, "resource": {"pid": 1000, "host": "bench", "rank": rank, "world_size": world_size},
               "spans": spans, "marks": marks, "snapshots": []}
        (spool_dir / f"{created}-{batch_id}.json").write_bytes(orjson.dumps(doc))


#: The exit code of a command whose confirmation prompt was declined (what the clear rows do).
DECLINED = 1

_TIME = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)


def measure(cmd: list[str], cwd: Path) -> tuple[float, float, int, float]:
    """(wall seconds, peak RSS MB, exit code, user+system CPU seconds) of ``cmd``.

    CPU seconds are reported too because wall time on a shared machine includes waiting for a core."""
    env = dict(os.environ, NO_COLOR="1", CIRRON_NO_PROGRESS="1")
    if _TIME and os.path.exists("/usr/bin/time"):
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, input="n\n")  # a clear's prompt: declined
        wall = time.perf_counter() - t0
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
        rss = int(m.group(1)) / 1024 if m else float("nan")
        u = re.search(r"User time \(seconds\): ([\d.]+)", p.stderr)
        st = re.search(r"System time \(seconds\): ([\d.]+)", p.stderr)
        cpu = (float(u.group(1)) if u else float("nan")) + (float(st.group(1)) if st else 0.0)
        if p.returncode not in (0, DECLINED):
            sys.stderr.write(p.stderr[-2000:])
        return wall, rss, p.returncode, cpu
    # Fallback: a helper process runs the command so RUSAGE_CHILDREN covers only it.
    helper = ("import resource, subprocess, sys, time; t=time.perf_counter(); "
              "r=subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
              "u=resource.getrusage(resource.RUSAGE_CHILDREN); "
              "print(time.perf_counter()-t, u.ru_maxrss, r, u.ru_utime+u.ru_stime)")
    out = subprocess.run([sys.executable, "-c", helper, *cmd], cwd=cwd, env=env, capture_output=True, text=True).stdout
    wall, rss_kb, rc, cpu = out.split()
    return float(wall), int(rss_kb) / 1024, int(rc), float(cpu)


DUCKDB_SPAN_TYPE = (
    "STRUCT(id VARCHAR, parent_id VARCHAR, name VARCHAR, \"index\" BIGINT, start_ns BIGINT, end_ns BIGINT, "
    "cpu_ns BIGINT, gpu_ns BIGINT, memory_peak_bytes BIGINT, thread_id BIGINT, pid BIGINT, rank BIGINT, attrs JSON)[]")
DUCKDB_MARK_TYPE = (
    "STRUCT(id VARCHAR, span_id VARCHAR, name VARCHAR, value DOUBLE, value_type VARCHAR, kind VARCHAR, "
    "ts_ns BIGINT, thread_id BIGINT, attrs JSON)[]")

#: DuckDB at its best: typed read_json into a temp table, then COPY spans and marks (optionally deduped by id).
#: argv: spool dir, output dir, "1" to dedupe, the spans column type, the marks column type.
DUCKDB_BEST = """
import sys, duckdb
spool, out, dedupe, span_type, mark_type = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4], sys.argv[5]
con = duckdb.connect()
con.execute("SET preserve_insertion_order=false")
types = "{'spans': '" + span_type + "', 'marks': '" + mark_type + "'}"
con.execute(f"CREATE TEMP TABLE b AS SELECT spans, marks FROM read_json('{spool}/*.json', format='auto', "
            f"maximum_object_size=268435456, columns={types})")
span_q = "SELECT unnest(s, recursive := true) FROM (SELECT unnest(spans) AS s FROM b)"
mark_q = "SELECT unnest(m, recursive := true) FROM (SELECT unnest(marks) AS m FROM b)"
if dedupe:
    span_q = f"SELECT * FROM ({span_q}) QUALIFY row_number() OVER (PARTITION BY id ORDER BY end_ns IS NULL) = 1"
    mark_q = f"SELECT * FROM ({mark_q}) QUALIFY row_number() OVER (PARTITION BY id) = 1"
con.execute(f"COPY ({span_q}) TO '{out}/spans.parquet' (FORMAT parquet)")
con.execute(f"COPY ({mark_q}) TO '{out}/marks.parquet' (FORMAT parquet)")
"""


def duckdb_cmd(spool: Path, out: Path, dedupe: bool) -> list[str]:
    return [sys.executable, "-c", DUCKDB_BEST, str(spool), str(_mkdir(out)), "1" if dedupe else "0",
            DUCKDB_SPAN_TYPE, DUCKDB_MARK_TYPE]


def generate_ranks(root: Path, n_ranks: int, spans_per_rank: int, run_id: str = "bench-run") -> str:
    """``n_ranks`` spools (``root/node<r>/.cirron/spool``), one session of rank r each; rank 3 is slow."""
    for r in range(n_ranks):
        spool = root / f"node{r}" / ".cirron" / "spool"
        if spool.is_dir() and any(spool.glob("*.json")):
            continue
        generate(spool, spans_per_rank, spans_per_rank, max(1, spans_per_rank // 5000), n_sessions=1,
                 rank=r, world_size=n_ranks, run_id=run_id, slow=2.0 if r == 3 else 1.0)
    return str(root / "node*" / ".cirron" / "spool")


def _commands(work: Path, spool: Path) -> list[tuple[str, list[str]]]:
    out = work / "out"
    out.mkdir(exist_ok=True)
    c = CIRRON
    sp = ["--spool", str(spool)]
    return [
        ("start-up (cirron --version)", [*c, "--version"]),
        ("traces list (cold index)", [*c, "traces", "list", *sp]),
        # the index traces list has just built holds no per-file listing yet: spool list reads every file
        ("spool list (cold index)", [*c, "spool", "list", *sp]),
        ("spool list (warm index)", [*c, "spool", "list", *sp]),
        ("traces list (warm index)", [*c, "traces", "list", *sp]),
        ("traces view --depth 2", [*c, "traces", "view", "--depth", "2", *sp]),
        ("traces ranks", [*c, "traces", "ranks", *sp]),
        ("traces snapshots", [*c, "traces", "snapshots", *sp]),
        # the clears plan everything and delete nothing: an old cutoff, a declined prompt
        ("traces clear --before 2000-01-01", [*c, "traces", "clear", "--before", "2000-01-01", *sp]),
        ("spool clear (declined)", [*c, "spool", "clear", "--spool", str(spool)]),
        ("export parquet", [*c, "traces", "export", "--format", "parquet", "--output", str(out / "pq"), *sp]),
        ("export parquet --partition-by session",
         [*c, "traces", "export", "--format", "parquet", "--partition-by", "session", "--output",
          str(out / "pqs"), *sp]),
        ("export csv", [*c, "traces", "export", "--format", "csv", "--output", str(out / "t.csv"), *sp]),
        ("export json", [*c, "traces", "export", "--format", "json", "--output", str(out / "t.json"), *sp]),
        ("export otel", [*c, "traces", "export", "--format", "otel", "--output", str(out / "t.otlp.json"), *sp]),
        ("export perfetto", [*c, "traces", "export", "--format", "perfetto", "--output", str(out / "t.pf.json"), *sp]),
        ("duckdb best (peer)", duckdb_cmd(spool, out / "duck", dedupe=False)),
        ("duckdb best + dedupe (peer)", duckdb_cmd(spool, out / "dd", dedupe=True)),
    ]


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _empty_outputs(out: Path) -> None:
    """Remove what the last command wrote under ``out`` (keeping the directories made for the
    peer): at 10M the outputs add up to over 20 GB, and a kept work dir's old outputs would make
    the next run's exports run out of disk beside them."""
    if not out.is_dir():
        return
    for p in out.iterdir():
        children = list(p.iterdir()) if p.is_dir() and not p.is_symlink() else [p]
        for c in children:
            if c.is_dir() and not c.is_symlink():
                shutil.rmtree(c, ignore_errors=True)
            else:
                c.unlink(missing_ok=True)


def _run_table(label: str, runs: list[tuple[str, list[str]]], cwd: Path, before: dict[str, object] | None = None,
               ) -> dict[str, tuple[float, float, int, float]]:
    print(f"\n## {label}  (load average {os.getloadavg()[0]:.1f})", flush=True)
    print(f"{'command':<40} {'wall s':>8} {'cpu s':>8} {'peak RSS MB':>12} {'rc':>3}", flush=True)
    results = {}
    for name, cmd in runs:
        hook = (before or {}).get(name)
        if callable(hook):
            hook()
        wall, rss, rc, cpu = measure(cmd, cwd)
        _empty_outputs(cwd / "out")
        results[name] = (wall, rss, rc, cpu)
        print(f"{name:<40} {wall:>8.2f} {cpu:>8.2f} {rss:>12.0f} {rc:>3}", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated span counts (marks: the same)")
    ap.add_argument("--10m", dest="ten_m", action="store_true", help="add the 10M-span size")
    ap.add_argument("--spans-per-file", type=int, default=5000)
    ap.add_argument("--ranks", type=int, default=8, help="multi-spool case: spools (one rank each)")
    ap.add_argument("--rank-spans", type=int, default=50_000, help="multi-spool case: spans per rank")
    ap.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    if args.ten_m:
        sizes.append(10_000_000)
    work = args.dir or Path(tempfile.mkdtemp(prefix="cirron-bench-"))
    # Byte-compiled as `pip install` leaves it: with PYTHONDONTWRITEBYTECODE set (as here) a fresh
    # checkout would recompile every changed module on every command's start.
    for package in ("cirron", "cli"):
        compileall.compile_dir(ROOT / package, quiet=1)
    all_results: dict[int, dict[str, tuple[float, float, int, float]]] = {}
    for n in sizes:
        size_dir = work / f"n{n}"
        spool = size_dir / ".cirron" / "spool"
        if not spool.is_dir() or not any(spool.glob("*.json")):
            t0 = time.perf_counter()
            generate(spool, n, n, max(1, n // args.spans_per_file))
            mb = sum(f.stat().st_size for f in spool.glob("*.json")) / 2**20
            print(f"generated {n:,} spans + {n:,} marks in {max(1, n // args.spans_per_file)} files ({mb:.0f} MB) "
                  f"in {time.perf_counter() - t0:.1f}s", flush=True)
        index = spool / ".index.msgpack"
        hooks = {"traces list (cold index)": lambda index=index: index.unlink(missing_ok=True)}
        all_results[n] = _run_table(f"{n:,} spans + {n:,} marks", _commands(size_dir, spool), size_dir, hooks)

    ranks_dir = work / f"ranks{args.ranks}"
    pattern = generate_ranks(ranks_dir, args.ranks, args.rank_spans)
    c = CIRRON
    out = _mkdir(ranks_dir / "out")
    multi = _run_table(f"multi-spool: {args.ranks} spools x 1 rank, {args.rank_spans:,} spans each", [
        ("traces list", [*c, "traces", "list", "--spool", pattern]),
        ("traces ranks", [*c, "traces", "ranks", "--spool", pattern]),
        ("traces view --run --depth 1", [*c, "traces", "view", "--run", "bench-run", "--depth", "1", "--spool", pattern]),
        ("export parquet --partition-by rank",
         [*c, "traces", "export", "--format", "parquet", "--partition-by", "rank", "--output", str(out / "pq"),
          "--spool", pattern]),
    ], ranks_dir)

    print("\n## summary: command x size -> wall s / cpu s / peak RSS MB (wall time / DuckDB best's, "
          "/ DuckDB best + dedupe's)")
    header = "| command | " + " | ".join(f"{n / 1e6:g}M spans + {n / 1e6:g}M marks" for n in sizes) + " |"
    print(header)
    print("|" + "---|" * (len(sizes) + 1))
    names = [name for name, _ in _commands(work, work)]
    for name in names:
        cells = []
        for n in sizes:
            r = all_results[n][name]
            duck, dedupe = all_results[n]["duckdb best (peer)"], all_results[n]["duckdb best + dedupe (peer)"]
            ratio = "" if "duckdb" in name else f" ({r[0] / duck[0]:.2f}x / {r[0] / dedupe[0]:.2f}x)"
            ok = r[2] == 0 or (r[2] == DECLINED and "declined" in name)
            cells.append(f"{r[0]:.2f} s / {r[3]:.2f} s / {r[1]:.0f} MB{ratio}" + ("" if ok else f" rc={r[2]}"))
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n| multi-spool command | wall s / cpu s / peak RSS MB |\n|---|---|")
    for name, r in multi.items():
        print(f"| {name} | {r[0]:.2f} s / {r[3]:.2f} s / {r[1]:.0f} MB |")
    print(f"\nload average after: {os.getloadavg()}")
    if not args.keep and args.dir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work dir kept: {work}")


if __name__ == "__main__":
    main()
