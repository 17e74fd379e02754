"""Benchmark `cirron ui` on a large spool: first view, zoom/pan answers, server memory.

Generates the spool of ``bench/bench_cli.py`` (default 1,000,000 spans and marks in 200 files,
4 sessions), starts ``cirron ui`` on it as a subprocess, and measures:

* the sessions table (``/api/sessions``, cold: the first read of the spool);
* the first view of the biggest session: its timeline page rendered in headless Chromium (when
  selenium + chromium are here), and the timeline API answer behind it, cold and warm;
* zoom/pan: timeline windows of random position and width (1e-4 .. 1 of the session), p50/max;
* the step breakdown and marks answers of that session;
* the server's peak and final RSS (``/proc/<pid>/status``).

The peer, side by side: ``cirron traces view --session <id> --depth 2`` on the same spool (the
text view of the same session), with the ratio. Targets (issue 20): first view <= 2 s, each
zoom/pan <= 200 ms, server <= 300 MB RSS.

    python bench/bench_ui.py                     # 1M spans / 1M marks
    python bench/bench_ui.py --spans 200000      # quicker
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "ui"))

from bench_cli import generate  # noqa: E402
from ui_helpers import UIServer  # noqa: E402


def rss_mb(pid: int) -> tuple[float, float]:
    """(peak, current) resident set size of ``pid`` in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def timed_get(client: httpx.Client, url: str, **params) -> tuple[float, dict]:
    t = time.perf_counter()
    r = client.get(url, params=params)
    dt = time.perf_counter() - t
    r.raise_for_status()
    return dt, r.json()


def browser_first_view(url: str) -> float | None:
    """Seconds from navigation to the timeline page having drawn its chart, in headless Chromium."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        return None
    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver_path:
        return None
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    profile = tempfile.mkdtemp(prefix="bench-ui-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        drv.get("about:blank")
        t = time.perf_counter()
        drv.get(url)
        WebDriverWait(drv, 120, poll_frequency=0.02).until(lambda d: d.execute_script("return document.body.dataset.ready"))
        dt = time.perf_counter() - t
        assert drv.execute_script("return document.body.dataset.ready") == "1"
        return dt
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--marks", type=int, default=None, help="default: same as --spans")
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--zooms", type=int, default=40, help="zoom/pan requests to time")
    ap.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-ui-"))
    spool = work / ".cirron" / "spool"
    if not spool.exists() or not any(spool.iterdir()):
        t = time.perf_counter()
        generate(spool, args.spans, args.marks if args.marks is not None else args.spans, args.files)
        print(f"generated {args.spans:,} spans in {args.files} files in {time.perf_counter() - t:.1f}s: {spool}")
    server = UIServer("--spool", str(spool))
    rows: list[tuple[str, str, str]] = []
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            t_list, doc = timed_get(client, "/api/sessions")
            rows.append(("sessions table (cold)", f"{t_list:.2f} s", ""))
            biggest = max(doc["sessions"], key=lambda s: s["spans"])
            sid = biggest["id"]
            base = f"/api/session/{sid}"
            t_cold, tl = timed_get(client, base + "/timeline", px=1400)
            t_warm, _ = timed_get(client, base + "/timeline", px=1400)
            rows.append((f"first view API, {biggest['spans']:,}-span session (cold: loads it)", f"{t_cold:.2f} s",
                         "target <= 2 s"))
            rows.append(("first view API (warm)", f"{t_warm * 1000:.0f} ms", ""))
            page = browser_first_view(f"{server.url}/session/{sid}/timeline")
            rows.append(("first view rendered in Chromium (warm server)",
                         f"{page:.2f} s" if page is not None else "n/a (no chromium/selenium)", "target <= 2 s"))
            total = tl["duration_ns"]
            rnd = random.Random(0)
            zooms = []
            for _ in range(args.zooms):
                width = total * 10 ** rnd.uniform(-4, 0)
                t0 = rnd.uniform(0, total - width)
                dt, _ = timed_get(client, base + "/timeline", t0=int(t0), t1=int(t0 + width), px=1400)
                zooms.append(dt)
            zooms.sort()
            rows.append((f"zoom/pan ({args.zooms} windows)",
                         f"p50 {statistics.median(zooms) * 1000:.0f} ms, max {zooms[-1] * 1000:.0f} ms", "target <= 200 ms"))
            for view in ("steps", "snapshots"):
                dt, _ = timed_get(client, f"{base}/{view}")
                rows.append((f"{view} API (warm session)", f"{dt * 1000:.0f} ms", ""))
            dt, _ = timed_get(client, "/api/marks", session=sid)
            rows.append(("marks API (warm session)", f"{dt * 1000:.0f} ms", ""))
        peak, now = rss_mb(server.proc.pid)
        rows.append(("server RSS", f"peak {peak:.0f} MB, now {now:.0f} MB", "target <= 300 MB"))
    finally:
        code, _out, err = server.stop()
        if code != 0:
            print(err, file=sys.stderr)
    env = {**os.environ, "CIRRON_NO_PROGRESS": "1"}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cirron_cli.app", "traces", "view", "--spool", str(spool), "--session", sid,
                    "--depth", "2"], check=True, stdout=subprocess.DEVNULL, env=env, timeout=1800)
    t_view = time.perf_counter() - t
    rows.append(("peer: `cirron traces view --session ID --depth 2`", f"{t_view:.2f} s",
                 f"ui first view (cold) / peer = {t_cold / t_view:.2f}x"))
    w = max(len(r[0]) for r in rows)
    print(f"\ncirron ui on {args.spans:,} spans / {args.files} files")
    for name, value, note in rows:
        print(f"  {name:<{w}}  {value:<34} {note}")
    if not args.keep and args.dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
