"""Time ``cirron.spool.columnar.read_columns`` on the biggest session of a spool: with the compiled
batch parser (``cirron/spool/_cbatch.c``) and with the msgspec decoder it stands in for, side by
side in one process, alternating, best of N each. Prints both and the ratio.

    python bench/bench_read_columns.py /work/bench_data/b/n1000000/.cirron/spool
    python bench/bench_read_columns.py SPOOL --runs 5

It only reads the spool (``use_index=False``: nothing is written into it).
"""

from __future__ import annotations

import argparse
import time

from cirron.spool import columnar, open_catalog


def _timed(info: object, parser: object) -> tuple[float, float]:
    columnar._cbatch = parser
    wall, cpu = time.perf_counter(), time.process_time()
    cols = columnar.read_columns(info)  # type: ignore[arg-type]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert cols is not None, "the columnar reader cannot read this session"
    del cols
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spool")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    compiled = columnar._cbatch
    if compiled is None:
        raise SystemExit("the compiled parser is not built (or CIRRON_PURE_PYTHON is set): nothing to compare")
    cat = open_catalog([args.spool], lambda _m: None, use_index=False)
    info = max(cat.sessions, key=lambda s: s.bytes)
    print(f"session {info.id}: {len(info.files)} files, {info.bytes / 1e6:.0f} MB")
    _timed(info, compiled)  # warm up: imports, pyarrow's first calls, the page cache
    best = {"compiled": (float("inf"), float("inf")), "decoder": (float("inf"), float("inf"))}
    for _ in range(args.runs):
        for name, parser in (("compiled", compiled), ("decoder", None)):
            wall, cpu = _timed(info, parser)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    columnar._cbatch = compiled
    for name, (wall, cpu) in best.items():
        print(f"read_columns, {name:8s}: wall {wall:6.2f} s, cpu {cpu:6.2f} s")
    (cw, cc), (dw, dc) = best["compiled"], best["decoder"]
    print(f"compiled / decoder: wall {cw / dw:.2f}, cpu {cc / dc:.2f}")


if __name__ == "__main__":
    main()
