"""Benchmark `cirron ui` on a large spool: first view, zoom/pan answers, server memory.

Generates the spool of ``bench/bench_cli.py`` (default 1,000,000 spans and marks in 200 files,
4 sessions), starts ``cirron ui`` on it as a subprocess, and measures:

* the user's first view: a fresh ``cirron ui``, and headless Chromium (when selenium + chromium
  are here, fresh profile) opening the biggest session's timeline URL straight away; the time
  from navigation until the chart has drawn data (the median of ``--repeat`` fresh servers),
  when the data had arrived and plotly.js had started, and the server's CPU time and RSS by then;
* on a second fresh server: the sessions table (``/api/sessions``, cold), the timeline API
  answer of that session, cold (loads it) and warm, and its page rendered with the server warm;
* zoom/pan: timeline windows of random position and width (1e-4 .. 1 of the session), p50/max;
* the step breakdown and marks answers of that session;
* the server's peak and final RSS (``/proc/<pid>/status``).

The peer, side by side: ``cirron traces view --session <id> --depth 2`` on the same spool (the
text view of the same session), with the ratio. Targets (issue 20): first view <= 2 s, each
zoom/pan <= 200 ms, server <= 300 MB RSS.

    python bench/bench_ui.py                     # 1M spans / 1M marks
    python bench/bench_ui.py --spans 200000      # quicker
    python bench/bench_ui.py --sessions 1        # one session of 1M spans (read piece by piece)
    python bench/bench_ui.py --dir /work/bench_data/s25   # an existing <dir>/.cirron/spool
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


def p95(sorted_values: list[float]) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(0.95 * len(sorted_values)))]


def timed_get(client: httpx.Client, url: str, **params) -> tuple[float, dict]:
    t = time.perf_counter()
    r = client.get(url, params=params)
    dt = time.perf_counter() - t
    r.raise_for_status()
    return dt, r.json()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Browser:
    """Headless Chromium with a fresh profile (nothing cached), started before it is timed."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium")
        self.profile = tempfile.mkdtemp(prefix="bench-ui-chromium-")
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--window-size=1400,1000", f"--user-data-dir={self.profile}"):
            opts.add_argument(arg)
        self.drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
        self.drv.get("about:blank")

    @staticmethod
    def available() -> bool:
        try:
            import selenium  # noqa: F401
        except ImportError:
            return False
        return bool(shutil.which("chromium") and shutil.which("chromedriver"))

    def first_view(self, url: str) -> tuple[float, str]:
        """Seconds from navigation to the timeline page having drawn its chart (data in it), and
        where the time went: when, after navigation, the timeline data had arrived and plotly.js
        had started (the page draws once it has both)."""
        from selenium.webdriver.support.ui import WebDriverWait

        self.drv.get("about:blank")
        t = time.perf_counter()
        self.drv.get(url)
        WebDriverWait(self.drv, 120, poll_frequency=0.01).until(
            lambda d: d.execute_script("return document.body.dataset.ready"))
        dt = time.perf_counter() - t
        assert self.drv.execute_script("return document.body.dataset.ready") == "1"
        drawn = self.drv.execute_script("return Number(document.getElementById('timeline').dataset.drawn || 0)")
        assert drawn > 0, "the timeline chart drew no data"
        data_s, plotly_s = self.drv.execute_script("""
            const data = performance.getEntriesByType('resource').filter(e => e.name.includes('/timeline?'));
            const nav = performance.getEntriesByType('navigation')[0];
            return [data.length ? data[0].responseEnd / 1000 : null, nav.domContentLoadedEventStart / 1000];""")
        return dt, f"data in at {data_s:.2f} s, plotly.js started at {plotly_s:.2f} s"

    def close(self) -> None:
        self.drv.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


def biggest_session(spool: Path) -> tuple[str, int]:
    """(id, spans) of the spool's biggest session, read here (the server under test is not asked)."""
    from cirron.spool import open_catalog

    info = max(open_catalog([spool], lambda _m: None).sessions, key=lambda s: s.spans)
    return info.id, info.spans


def cold_first_view(spool: Path, sid: str, repeat: int, rows: list[tuple[str, str, str]]) -> float | None:
    """What a user sees first: a fresh ``cirron ui``, and a fresh browser profile (nothing cached)
    opening the session's timeline URL at once; ``repeat`` times, the median reported."""
    if not Browser.available():
        rows.append(("first view drawn, fresh server", "n/a (no chromium/selenium)", "target <= 2 s"))
        return None
    runs = []
    for _ in range(repeat):
        browser = Browser()
        try:
            server = UIServer("--spool", str(spool))
            try:
                page, where = browser.first_view(f"{server.url}/session/{sid}/timeline")
                cpu = cpu_s(server.proc.pid)
                peak, _now = rss_mb(server.proc.pid)
            finally:
                code, _out, err = server.stop()
                if code != 0:
                    print(err, file=sys.stderr)
        finally:
            browser.close()
        runs.append((page, where, cpu, peak))
    runs.sort()
    page, where, cpu, peak = runs[len(runs) // 2]
    spread = f" (of {repeat}: {runs[0][0]:.2f} .. {runs[-1][0]:.2f} s)" if repeat > 1 else ""
    rows.append(("first view drawn in Chromium, fresh server (the user's first view)", f"{page:.2f} s{spread}",
                 f"target <= 2 s; {where}; server CPU {cpu:.2f} s, peak RSS {peak:.0f} MB"))
    return page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--marks", type=int, default=None, help="default: same as --spans")
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--sessions", type=int, default=4,
                    help="sessions to spread the spans over (1: one session of --spans spans, over the columnar "
                         "reader's limit from about 550,000 spans, so read piece by piece)")
    ap.add_argument("--zooms", type=int, default=40, help="zoom/pan requests to time")
    ap.add_argument("--repeat", type=int, default=3, help="fresh servers the first view is timed on (median)")
    ap.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-ui-"))
    spool = work / ".cirron" / "spool"
    if not spool.exists() or not any(spool.iterdir()):
        t = time.perf_counter()
        generate(spool, args.spans, args.marks if args.marks is not None else args.spans, args.files,
                 n_sessions=args.sessions)
        print(f"generated {args.spans:,} spans in {args.files} files in {time.perf_counter() - t:.1f}s: {spool}")
    rows: list[tuple[str, str, str]] = []
    sid, spans = biggest_session(spool)
    cold_first_view(spool, sid, args.repeat, rows)
    server = UIServer("--spool", str(spool))
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            t_list, _doc = timed_get(client, "/api/sessions")
            rows.append(("sessions table (cold)", f"{t_list:.2f} s", ""))
            base = f"/api/session/{sid}"
            t_cold, tl = timed_get(client, base + "/timeline", px=1400)
            cpu_cold = cpu_s(server.proc.pid)
            t_warm, _ = timed_get(client, base + "/timeline", px=1400)
            rows.append((f"first view API, {spans:,}-span session (fresh server: loads it)", f"{t_cold:.2f} s",
                         f"server CPU so far {cpu_cold:.2f} s"))
            rows.append(("first view API (warm)", f"{t_warm * 1000:.0f} ms", ""))
            if Browser.available():
                browser = Browser()
                try:
                    page, where = browser.first_view(f"{server.url}/session/{sid}/timeline")
                finally:
                    browser.close()
                rows.append(("first view rendered in Chromium (warm server)", f"{page:.2f} s", where))
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
                         f"p50 {statistics.median(zooms) * 1000:.0f} ms, p95 {p95(zooms) * 1000:.0f} ms, "
                         f"max {zooms[-1] * 1000:.0f} ms", "target <= 200 ms"))
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
    print(f"\ncirron ui on {spool}: biggest session {spans:,} spans (load average {os.getloadavg()[0]:.1f})")
    for name, value, note in rows:
        print(f"  {name:<{w}}  {value:<34} {note}")
    if not args.keep and args.dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
