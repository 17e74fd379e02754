"""Benchmark the `cirron traces` commands on a large spool, side by side with DuckDB.

Generates a spool of N spans and N marks (default 1,000,000 each) in 200 batch files, then runs
each command as a subprocess under ``/usr/bin/time -v`` (wall time, peak RSS) and DuckDB reading
the same batch files (``read_json`` → unnest the spans arrays → ``COPY … TO parquet``) as the peer.

    .venv/bin/python bench/bench_cli.py                 # 1M spans / 1M marks, 200 files
    .venv/bin/python bench/bench_cli.py --spans 100000  # quicker
    .venv/bin/python bench/bench_cli.py --dir /tmp/b --keep   # reuse/keep the generated spool

Targets: Parquet export within 2x DuckDB's time; CSV export peak RSS < 300 MB; `traces list` < 5 s.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
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


def generate(spool_dir: Path, n_spans: int, n_marks: int, n_files: int, n_sessions: int = 4) -> None:
    """Sessions → epochs → steps → forward/backward leaves; one loss mark per step and more on leaves."""
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
                          "memory_peak_bytes": None, "thread_id": 1, "pid": 1000 + f, "rank": 0,
                          "attrs": {"sdk_version": "0.1.0"}})
            epoch_id = None
        k = 0
        while len(spans) < per_file_spans:
            if epoch_id is None or k % 1000 == 0:
                epoch_id = rnd(16).hex()
                spans.append({"id": epoch_id, "parent_id": session_id, "name": "epoch", "index": k // 1000,
                              "start_ns": t, "end_ns": t + 3_000_000_000, "cpu_ns": 1, "gpu_ns": None,
                              "memory_peak_bytes": None, "thread_id": 1, "pid": 1000, "rank": 0, "attrs": {}})
            step_id = rnd(16).hex()
            spans.append({"id": step_id, "parent_id": epoch_id, "name": "step", "index": k, "start_ns": t,
                          "end_ns": t + 3_000_000, "cpu_ns": 2_000_000, "gpu_ns": None, "memory_peak_bytes": 1 << 20,
                          "thread_id": 1, "pid": 1000, "rank": 0, "attrs": {"batch_size": 32}})
            for name in ("forward", "backward"):
                if len(spans) >= per_file_spans:
                    break
                spans.append({"id": rnd(16).hex(), "parent_id": step_id, "name": name, "index": None,
                              "start_ns": t + 10, "end_ns": t + 1_000_000, "cpu_ns": 900_000, "gpu_ns": None,
                              "memory_peak_bytes": None, "thread_id": 1, "pid": 1000, "rank": 0, "attrs": {}})
            t += 3_000_000
            k += 1
        span_ids = [s["id"] for s in spans]
        for j in range(per_file_marks):
            marks.append({"id": rnd(16).hex(), "span_id": span_ids[j % len(span_ids)], "name": "loss",
                          "value": 1.0 / (j + 1), "value_type": "float", "kind": "point", "ts_ns": t + j,
                          "thread_id": 1, "attrs": {"step": j}})
        created += 1_000_000
        batch_id = rnd(16).hex()
        doc = {"schema_version": 1, "sdk_version": "0.1.0", "batch_id": batch_id, "created_ns": created,
               "session_id": session_id, "resource": {"pid": 1000, "host": "bench", "rank": 0, "world_size": 1},
               "spans": spans, "marks": marks, "snapshots": []}
        (spool_dir / f"{created}-{batch_id}.json").write_bytes(orjson.dumps(doc))


_TIME = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)


def measure(cmd: list[str], cwd: Path) -> tuple[float, float, int, float]:
    """(wall seconds, peak RSS MB, exit code, user+system CPU seconds) of ``cmd``.

    CPU seconds are reported too because wall time on a shared machine includes waiting for a core."""
    env = dict(os.environ, NO_COLOR="1", CIRRON_NO_PROGRESS="1")
    if _TIME and os.path.exists("/usr/bin/time"):
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
        rss = int(m.group(1)) / 1024 if m else float("nan")
        u = re.search(r"User time \(seconds\): ([\d.]+)", p.stderr)
        st = re.search(r"System time \(seconds\): ([\d.]+)", p.stderr)
        cpu = (float(u.group(1)) if u else float("nan")) + (float(st.group(1)) if st else 0.0)
        if p.returncode != 0:
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


DUCKDB_SCRIPT = """
import sys, duckdb
spool, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET preserve_insertion_order=false")
con.execute(f'''COPY (SELECT unnest(s, recursive := true) FROM (
    SELECT unnest(spans) AS s FROM read_json('{spool}/*.json', format='auto', maximum_object_size=67108864,
        columns={{'spans': 'STRUCT(id VARCHAR, parent_id VARCHAR, name VARCHAR, "index" BIGINT, start_ns BIGINT,
            end_ns BIGINT, cpu_ns BIGINT, gpu_ns BIGINT, memory_peak_bytes BIGINT, thread_id BIGINT, pid BIGINT,
            rank BIGINT, attrs JSON)[]'}})))
    TO '{out}' (FORMAT parquet)''')
print(con.execute(f"SELECT count(*) FROM '{out}'").fetchone()[0])
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--marks", type=int, default=None, help="default: same as --spans")
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()
    n_marks = args.spans if args.marks is None else args.marks
    work = args.dir or Path(tempfile.mkdtemp(prefix="cirron-bench-"))
    spool = work / ".cirron" / "spool"
    if not spool.is_dir() or not any(spool.glob("*.json")):
        t0 = time.perf_counter()
        generate(spool, args.spans, n_marks, args.files)
        print(f"generated {args.spans:,} spans, {n_marks:,} marks in {args.files} files "
              f"({sum(f.stat().st_size for f in spool.glob('*.json')) / 2**20:.0f} MB) in {time.perf_counter() - t0:.1f}s",
              flush=True)
    out = work / "out"
    out.mkdir(exist_ok=True)
    c = CIRRON
    runs = [
        ("traces list", [*c, "traces", "list"]),
        ("traces view --depth 2", [*c, "traces", "view", "--depth", "2"]),
        ("export parquet", [*c, "traces", "export", "--format", "parquet", "--output", str(out / "pq")]),
        ("export csv", [*c, "traces", "export", "--format", "csv", "--output", str(out / "t.csv")]),
        ("export json", [*c, "traces", "export", "--format", "json", "--output", str(out / "t.json")]),
        ("export otel", [*c, "traces", "export", "--format", "otel", "--output", str(out / "t.otlp.json")]),
        ("export perfetto", [*c, "traces", "export", "--format", "perfetto", "--output", str(out / "t.pf.json")]),
        ("duckdb read_json → parquet (peer)", [sys.executable, "-c", DUCKDB_SCRIPT, str(spool), str(out / "duck.parquet")]),
    ]
    results = {}
    print(f"uptime/load: {os.getloadavg()}", flush=True)
    print(f"{'command':<36} {'wall s':>8} {'cpu s':>8} {'peak RSS MB':>12} {'rc':>3}", flush=True)
    for label, cmd in runs:
        wall, rss, rc, cpu = measure(cmd, work)
        results[label] = (wall, rss, rc, cpu)
        print(f"{label:<36} {wall:>8.2f} {cpu:>8.2f} {rss:>12.0f} {rc:>3}", flush=True)
    duck = results["duckdb read_json → parquet (peer)"]
    pq = results["export parquet"]
    print()
    print(f"parquet export / duckdb time: {pq[0] / duck[0]:.2f}x wall, {pq[3] / duck[3]:.2f}x cpu (target <= 2x)")
    print(f"csv export peak RSS: {results['export csv'][1]:.0f} MB (target < 300 MB)")
    print(f"traces list: {results['traces list'][0]:.2f}s wall, {results['traces list'][3]:.2f}s cpu (target < 5 s)")
    print(f"load average after: {os.getloadavg()}")
    if not args.keep and args.dir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work dir kept: {work}")
    _ = resource  # (imported for the fallback helper's docs)


if __name__ == "__main__":
    main()
