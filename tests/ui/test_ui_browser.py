"""Every page of ``cirron ui`` in a real headless Chromium (selenium + chromedriver).

Each page must finish loading, every chart on it must hold data and have drawn SVG, and the
browser console must stay free of errors. Screenshots go to ``$CIRRON_UI_SCREENSHOTS`` when set
(``CIRRON_UI_SCREENSHOTS=docs/img python -m pytest tests/ui`` refreshes the docs' images),
else to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ui_helpers import LiveRun, Runs, UIServer

pytestmark = pytest.mark.slow

# read at import, against the directory pytest was started in: each test then runs in a
# temporary directory with CIRRON_* cleared (tests/conftest.py)
SHOTS = os.path.abspath(os.environ["CIRRON_UI_SCREENSHOTS"]) if os.environ.get("CIRRON_UI_SCREENSHOTS") else None
PAGE_TIMEOUT = 60


def _find_chromium() -> tuple[str, str] | None:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    found = _find_chromium()
    if found is None:
        pytest.skip("no Chromium here: apt-get install -y chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=opts)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    driver.set_script_timeout(PAGE_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def _shot_dir(tmp_path: Path) -> Path:
    d = Path(SHOTS) if SHOTS else tmp_path
    d.mkdir(parents=True, exist_ok=True)
    return d


def open_page(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, PAGE_TIMEOUT, poll_frequency=0.1).until(
        lambda d: d.execute_script("return document.body.dataset.ready"))
    ready = driver.execute_script("return document.body.dataset.ready")
    assert ready == "1", driver.find_element("id", "main").text


def charts(driver) -> list[dict]:
    """Per plotly chart on the page: its traces, data points and drawn SVG shapes."""
    return driver.execute_script("""
        return [...document.querySelectorAll('.js-plotly-plot')].map(gd => ({
          id: gd.id,
          traces: gd.data.length,
          points: gd.data.reduce((n, t) => n + ((t.x || t.z || []).length || 0), 0),
          shapes: gd.querySelectorAll('.plot path, .plot image, .heatmaplayer image, .barlayer path, .scatterlayer path').length,
        }));""")


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def check_page(driver, url: str, shot: Path, min_charts: int) -> list[dict]:
    driver.get_log("browser")  # drop what earlier pages left
    open_page(driver, url)
    drawn = charts(driver)
    driver.save_screenshot(str(shot))
    assert len(drawn) >= min_charts, drawn
    for c in drawn:
        assert c["traces"] > 0 and c["points"] > 0, c
        assert c["shapes"] > 0, f"chart {c['id']} has data but drew nothing: {c}"
    assert console_errors(driver) == []
    origin = url.split("/", 3)[:3]
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.split("/", 3)[:3] == origin for u in loaded), loaded  # nothing from elsewhere
    return drawn


def _sessions(server: UIServer) -> list[dict]:
    return httpx.get(server.url + "/api/sessions", timeout=30).json()["sessions"]


def _sid(server: UIServer, spool: Path) -> str:
    return next(s["id"] for s in _sessions(server) if s["spool"] == str(spool))


def test_runs_page(browser, ui_server: UIServer, tmp_path: Path) -> None:
    check_page(browser, ui_server.url + "/", _shot_dir(tmp_path) / "ui-runs.png", 0)
    rows = browser.find_elements("css selector", "#sessions tbody tr")
    assert len(rows) == len(_sessions(ui_server)) == 4
    assert "ended" in rows[0].text


def test_timeline_page_zooms_through_the_server(browser, ui_server: UIServer, runs: Runs, tmp_path: Path) -> None:
    sid = _sid(ui_server, runs.train)
    drawn = check_page(browser, f"{ui_server.url}/session/{sid}/timeline", _shot_dir(tmp_path) / "ui-timeline.png", 1)
    before = drawn[0]["points"]
    # zoom onto the first epoch's first whole batch, as a drag would: the page asks the server for that window
    spans = httpx.get(f"{ui_server.url}/api/session/{sid}/timeline?px=1200", timeout=30).json()["spans"]
    epoch = next(s for s in spans if s["name"] == "epoch")
    batch = min((s for s in spans if s["name"] == "batch" and epoch["start"] <= s["start"] < epoch["end"]),
                key=lambda s: s["start"])
    browser.execute_script("Plotly.relayout(document.getElementById('timeline'), {'xaxis.range': arguments[0]});",
                           [epoch["start"] / 1e6, batch["end"] / 1e6])
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, PAGE_TIMEOUT, poll_frequency=0.1).until(
        lambda d: f"t0={epoch['start']}" in d.current_url)
    WebDriverWait(browser, PAGE_TIMEOUT, poll_frequency=0.1).until(
        lambda d: charts(d)[0]["points"] != before)
    names = browser.execute_script("return document.getElementById('timeline').data.map(t => t.name)")
    assert {"forward", "backward", "data_load"} <= set(names)
    browser.save_screenshot(str(_shot_dir(tmp_path) / "ui-timeline-zoomed.png"))
    assert console_errors(browser) == []
    # a window's edges travel in ms (plotly's axis) and come back as the ns asked for, float noise
    # and all (1000001 / 1e6 * 1e6 is 1000000.9999999999 in a double)
    browser.execute_script("Plotly.relayout(document.getElementById('timeline'), {'xaxis.range': [1000001 / 1e6, 1000017 / 1e6]});")
    WebDriverWait(browser, PAGE_TIMEOUT, poll_frequency=0.1).until(lambda d: "t0=1000001&t1=1000017" in d.current_url)


def test_steps_page(browser, ui_server: UIServer, runs: Runs, tmp_path: Path) -> None:
    sid = _sid(ui_server, runs.train)
    check_page(browser, f"{ui_server.url}/session/{sid}/steps", _shot_dir(tmp_path) / "ui-steps.png", 1)
    names = browser.execute_script("return document.getElementById('steps').data.map(t => t.name)")
    assert names == ["data_load", "forward", "backward", "optimizer_step", "other"]
    assert len(browser.find_elements("css selector", "#slowest tbody tr")) == 20
    link = browser.find_element("css selector", "#slowest tbody tr a").get_attribute("href")
    assert f"/session/{sid}/timeline?t0=" in link


def test_marks_page_smoothing_and_log_scale(browser, ui_server: UIServer, runs: Runs, tmp_path: Path) -> None:
    sid = _sid(ui_server, runs.train)
    check_page(browser, f"{ui_server.url}/session/{sid}/marks", _shot_dir(tmp_path) / "ui-marks.png", 2)
    assert len(browser.find_elements("css selector", "#summary-marks tbody tr")) == 4
    browser.execute_script("const s = document.getElementById('smooth'); s.value = '0.8'; s.dispatchEvent(new Event('input'));"
                           "const l = document.getElementById('logy'); l.checked = true; l.dispatchEvent(new Event('change'));")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, PAGE_TIMEOUT, poll_frequency=0.1).until(lambda d: d.execute_script(
        "const gd = document.getElementById('mark-loss'); return gd.layout.yaxis.type === 'log' && gd.data.length === 2"))
    raw, smoothed = browser.execute_script("const gd = document.getElementById('mark-loss'); return [gd.data[0].y, gd.data[1].y]")
    assert len(raw) == len(smoothed) == 48 and raw != smoothed
    assert console_errors(browser) == []


def test_marks_of_several_sessions_overlaid(browser, ui_server: UIServer, runs: Runs, tmp_path: Path) -> None:
    ids = [s["id"] for s in _sessions(ui_server) if s["run_id"] == "run-42"] + [_sid(ui_server, runs.train)]
    url = f"{ui_server.url}/marks?" + "&".join(f"session={i}" for i in ids)
    check_page(browser, url, _shot_dir(tmp_path) / "ui-marks-compare.png", 2)
    traces = browser.execute_script("return document.getElementById('mark-loss').data.map(t => t.name)")
    assert len(traces) == 3, traces
    assert sorted(t.split(" · ")[0] for t in traces[:2]) == ["rank 0", "rank 1"]  # a run's sessions by rank
    assert traces[2] == ids[2][:8]  # a session alone in its run: by id


def test_snapshots_page(browser, ui_server: UIServer, runs: Runs, tmp_path: Path) -> None:
    sid = _sid(ui_server, runs.train)
    check_page(browser, f"{ui_server.url}/session/{sid}/snapshots", _shot_dir(tmp_path) / "ui-snapshots.png", 2)
    z = browser.execute_script("return document.getElementById('snap-hist').data[0].z")
    assert len(z) == 48 and len(z[0]) == 4


def test_requests_page(browser, ui_server: UIServer, runs: Runs, tmp_path: Path) -> None:
    """The requests of the real FastAPI run: the figures the page prints are the API's, the
    distributions hold every stream and request, and the slowest request links to its timeline."""
    sid = _sid(ui_server, runs.inference)
    api = httpx.get(f"{ui_server.url}/api/session/{sid}/requests", timeout=30).json()
    check_page(browser, f"{ui_server.url}/session/{sid}/requests", _shot_dir(tmp_path) / "ui-requests.png", 3)
    summary = browser.find_element("id", "req-summary").text
    for name in ("p50", "p95", "p99"):
        shown = browser.execute_script("return cirronUI.fmtNs(arguments[0])", api["overall"][name])
        assert f"{name} {shown}" in summary, (name, shown, summary)
    n_ttft, n_tps = browser.execute_script(
        "return [document.getElementById('ttft').data[0].x.length, document.getElementById('tps').data[0].x.length]")
    assert n_ttft == sum(r.kind == "stream" for r in runs.served.sent) == 20
    assert n_tps == len(runs.served.sent)
    rows = browser.find_elements("css selector", "#slowest tbody tr")
    assert len(rows) == 20
    top = api["slowest"][0]  # which request that is, the API test checks against what was sent
    link = rows[0].find_element("css selector", "a")
    assert link.text == top["request_id"]
    link.click()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, PAGE_TIMEOUT, poll_frequency=0.1).until(
        lambda d: "/timeline" in d.current_url and d.execute_script("return document.body.dataset.ready") == "1")
    hovers = browser.execute_script("""
        const gd = document.getElementById('timeline');
        return gd.data.filter(t => t.name === 'request').flatMap(t => t.customdata.map(c => c[4]));""")
    assert any(top["request_id"] in h for h in hovers), hovers
    shaded = browser.execute_script("return document.getElementById('timeline').layout.shapes")
    assert [(s["x0"], s["x1"]) for s in shaded] == [(top["start"] / 1e6, top["end"] / 1e6)]  # the linked request
    # the four client threads overlapped: requests that overlap in time are on rows of their own
    bars = browser.execute_script("""
        const t = document.getElementById('timeline').data.find(t => t.name === 'request');
        return t.base.map((b, k) => [b, b + t.x[k], t.y[k]]);""")
    for k, (a0, a1, ya) in enumerate(bars):
        for b0, b1, yb in bars[k + 1:]:
            assert not (a0 < b1 and b0 < a1 and ya == yb), ((a0, a1, ya), (b0, b1, yb))
    assert len({y for _, _, y in bars}) > 1
    browser.save_screenshot(str(_shot_dir(tmp_path) / "ui-requests-slowest-timeline.png"))
    assert console_errors(browser) == []


def test_ranks_page(browser, ui_server: UIServer, tmp_path: Path) -> None:
    check_page(browser, f"{ui_server.url}/run/run-42", _shot_dir(tmp_path) / "ui-ranks.png", 1)
    assert "straggler" in browser.find_element("id", "ranks-table").text


def test_pages_without_data_say_so(browser, ui_server: UIServer, runs: Runs) -> None:
    sid = _sid(ui_server, runs.inference)
    for view, text in (("steps", "No training steps"), ("snapshots", "No snapshots")):
        open_page(browser, f"{ui_server.url}/session/{sid}/{view}")
        assert text in browser.find_element("id", "main").text
    train = _sid(ui_server, runs.train)
    open_page(browser, f"{ui_server.url}/session/{train}/requests")
    assert "No @ci.inference requests" in browser.find_element("id", "main").text
    assert console_errors(browser) == []


def test_empty_spool_page_says_so(browser, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    server = UIServer("--spool", str(spool))
    try:
        open_page(browser, server.url + "/")
        assert "No traces found in this spool yet" in browser.find_element("id", "main").text
        assert console_errors(browser) == []
    finally:
        server.stop()


def test_runs_page_names_a_corrupt_batch_file(browser, runs: Runs, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    shutil.copytree(runs.train, spool)
    batch = sorted(spool.glob("*.json"))[-1]
    batch.write_bytes(batch.read_bytes()[:100])
    server = UIServer("--spool", str(spool))
    try:
        open_page(browser, server.url + "/")
        warning = browser.find_element("id", "warnings").text
        assert batch.name in warning and "could not be read" in warning
        assert len(browser.find_elements("css selector", "#sessions tbody tr")) == 1
        assert console_errors(browser) == []
    finally:
        server.stop()


def test_live_run_refreshes_on_its_own(browser, tmp_path: Path) -> None:
    """While a run writes, the runs page badges it live and the marks chart grows without a reload."""
    from selenium.webdriver.support.ui import WebDriverWait

    run = LiveRun(tmp_path / "live")
    server = None
    try:
        WebDriverWait(browser, PAGE_TIMEOUT, poll_frequency=0.1).until(lambda _d: any(run.spool.glob("*.json")))
        server = UIServer("--spool", str(run.spool))
        open_page(browser, server.url + "/")
        WebDriverWait(browser, PAGE_TIMEOUT, poll_frequency=0.2).until(
            lambda d: "live" in d.find_element("css selector", "#sessions tbody tr .badge").text)
        assert "refreshing every 2 s" in browser.find_element("id", "status").text
        sid = _sessions(server)[0]["id"]
        open_page(browser, f"{server.url}/session/{sid}/marks")
        points = "return document.getElementById('mark-loss').data[0].y.length"
        first = browser.execute_script(points)
        WebDriverWait(browser, PAGE_TIMEOUT, poll_frequency=0.2).until(lambda d: d.execute_script(points) > first)
        run.stop()
        open_page(browser, server.url + "/")
        WebDriverWait(browser, PAGE_TIMEOUT, poll_frequency=0.2).until(
            lambda d: "ended" in d.find_element("css selector", "#sessions tbody tr .badge").text)
        assert console_errors(browser) == []
    finally:
        if run.proc.poll() is None:
            run.stop()
        if server is not None:
            server.stop()


def test_readme_demo_shows_loss_steps_timeline_and_weights(browser, tmp_path: Path) -> None:
    """The issue's "done when": run the README's demo, then ``cirron ui``, and see the loss curve,
    the step breakdown, the timeline and the weight histograms without writing plotting code."""
    import subprocess
    import sys

    demo = Path(__file__).resolve().parents[2] / "examples" / "train_demo.py"
    subprocess.run([sys.executable, str(demo)], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    server = UIServer(cwd=tmp_path)  # the default spool, .cirron/spool, as a user would
    try:
        sid = _sessions(server)[0]["id"]
        base = f"{server.url}/session/{sid}"
        check_page(browser, base + "/marks", tmp_path / "marks.png", 1)
        assert len(browser.execute_script("return document.getElementById('mark-loss').data[0].y")) == 12
        check_page(browser, base + "/steps", tmp_path / "steps.png", 1)
        assert len(browser.execute_script("return document.getElementById('steps').data[0].y")) == 12
        check_page(browser, base + "/timeline", tmp_path / "timeline.png", 1)
        names = browser.execute_script("return document.getElementById('timeline').data.map(t => t.name)")
        assert "epoch" in names and any(n.startswith("batch") for n in names)  # drawn, or merged at this zoom
        check_page(browser, base + "/snapshots", tmp_path / "snapshots.png", 2)
        z = browser.execute_script("return document.getElementById('snap-hist').data[0].z")
        assert len(z[0]) == 3  # one histogram per epoch
    finally:
        code, _out, err = server.stop()
    assert code == 0, err


def test_requests_without_streams_or_tokens_say_so(browser, tmp_path: Path) -> None:
    import subprocess
    import sys

    script = ("import cirron as ci\nci.profile()\n@ci.inference\ndef predict(x):\n    return x * 2\n"
              "for i in range(5):\n    predict(i)\nci.shutdown()\n")
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    server = UIServer(cwd=tmp_path)
    try:
        sid = _sessions(server)[0]["id"]
        check_page(browser, f"{server.url}/session/{sid}/requests", tmp_path / "requests.png", 1)
        note = browser.find_element("id", "req-missing").text
        assert "no time to first token" in note and "no tokens/s" in note
        assert browser.find_elements("id", "ttft") == [] and browser.find_elements("id", "tps") == []
    finally:
        server.stop()
