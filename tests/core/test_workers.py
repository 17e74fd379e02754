"""Issue 16: worker processes and ranks keep their records in the session that started them.

Every scenario runs a real program in a subprocess (bounded in time) and reads the spool back
twice: the batch files, and ``cirron traces list --json`` (what a user sees)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cirron_cli.app import app
from core.helpers import batch_files, by_name, read_spool

WORK = """
import os, sys, cirron as ci

def work(n):
    with ci.scope("work", n=n):
        ci.mark("n", n)
    return n
"""


def run_program(code: str, cwd: Path, timeout: float = 90, expect_loss: bool = False) -> subprocess.CompletedProcess:
    (cwd / "prog.py").write_text(textwrap.dedent(code))
    # its own process group, so a hang ends with every worker it started, none left orphaned
    proc = subprocess.Popen([sys.executable, "prog.py"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the program did not finish within {timeout} s")
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert ("not kept" in result.stderr) == expect_loss, result.stderr
    return result


def listed(cwd: Path) -> list[dict]:
    """``cirron traces list --json`` on ``cwd``'s spool: the sessions a user sees."""
    r = CliRunner().invoke(app, ["traces", "list", "--json", "--spool", str(cwd / ".cirron" / "spool")])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["sessions"]


def check_workers(cwd: Path, made: int, under: str = "submit") -> dict:
    """Every ``work`` span is on disk, inside a worker's process root below ``under``, in one session."""
    data = read_spool(cwd / ".cirron" / "spool")
    spans = data["spans"]
    work = by_name(spans, "work")
    assert sorted(s["attrs"]["n"] for s in work) == list(range(made))
    (parent,) = by_name(spans, under)
    roots = {s["id"]: s for s in by_name(spans, "cirron.process")}
    assert roots and all(r["parent_id"] == parent["id"] and r["end_ns"] is not None for r in roots.values())
    assert all(s["parent_id"] in roots and s["pid"] == roots[s["parent_id"]]["pid"] != parent["pid"] for s in work)
    assert not list((cwd / ".cirron" / "spool" / ".live").glob("*.worker"))  # every worker wrote all it had
    (session,) = listed(cwd)
    # one session holds every span on disk: the work, the worker roots, the parent's own
    assert session["spans"] == len(spans) >= made + len(roots) + 2
    assert session["marks"] == made and not session["crashed"] and not session["live"]
    return data


POOLS = {
    # Pool.__exit__ calls terminate(): the workers are stopped by SIGTERM, not by a clean exit.
    "Pool": "mp.get_context(method).Pool(2)",
    "ProcessPoolExecutor": "ProcessPoolExecutor(2, mp_context=mp.get_context(method))",
}


@pytest.mark.parametrize(("pool", "method"), [("Pool", "fork"), ("Pool", "forkserver"), ("Pool", "spawn"),
                                              ("ProcessPoolExecutor", "fork"), ("ProcessPoolExecutor", "spawn")])
def test_pools_with_each_start_method(tmp_path: Path, pool: str, method: str) -> None:
    run_program(WORK + f"""
if __name__ == "__main__":
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    method = "{method}"
    ci.profile(flush_interval=60)
    with ci.scope("submit"):
        with {POOLS[pool]} as workers:
            assert sum(workers.map(work, range(100))) == 4950
""", tmp_path)
    check_workers(tmp_path, 100)


def test_sigterm_reaching_a_forked_worker_as_it_is_born_ends_it(tmp_path: Path) -> None:
    # Pool.terminate() can reach a worker that has not run yet (a loaded machine): the SIGTERM
    # arrives while the child is still being set up. It used to be lost (CPython drops a caught
    # signal that comes before its after-fork reset) or to hang the child in the parent's flush
    # service. A hook registered before cirron's runs first in the child: there the signal must
    # still be held, and once the child is ready it ends it as it would without cirron.
    result = run_program("""
import os, signal

def born():
    held = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with open(f"born-{os.getpid()}", "w") as f:
        f.write("held" if held else "open")
    os.kill(os.getpid(), signal.SIGTERM)

os.register_at_fork(after_in_child=born)
import cirron as ci

def work():
    with ci.scope("work"):
        pass

if __name__ == "__main__":
    import multiprocessing as mp
    ci.profile(flush_interval=60)
    with ci.scope("submit"):
        p = mp.get_context("fork").Process(target=work)
        p.start()
        p.join(30)
        if p.exitcode is None:
            p.kill()
        print(p.exitcode, open(f"born-{p.pid}").read())
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the parent's mask is back
""", tmp_path)
    assert result.stdout.split() == ["-15", "held"]


SUBMIT_FROM_TWO_SCOPES = {
    # One pool, made before either scope and reused: each task must hang from the scope it was
    # submitted from, not from where (or when) its worker process started.
    "Pool": """
        with mp.get_context(method).Pool(2) as pool:
            with ci.scope("a"):
                assert sum(pool.map(work, range(10))) == 45
            with ci.scope("b"):
                done = [r.get(60) for r in [pool.apply_async(work, (n,)) for n in range(10, 15)]]
                done += [*pool.imap(work, range(15, 18)), *pool.starmap(work, [(18,), (19,)])]
                assert sorted(done) == list(range(10, 20))
""",
    "ProcessPoolExecutor": """
        with ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as pool:
            with ci.scope("a"):
                assert sum(pool.map(work, range(10))) == 45
            with ci.scope("b"):
                assert sorted(pool.submit(work, n).result(60) for n in range(10, 20)) == list(range(10, 20))
""",
    "joblib": """
        from joblib import Parallel, delayed
        with Parallel(n_jobs=2) as parallel:  # loky: its workers are reused by both calls
            with ci.scope("a"):
                assert sum(parallel(delayed(work)(n) for n in range(10))) == 45
            with ci.scope("b"):
                assert sum(parallel([delayed(work)(n) for n in range(10, 20)])) == 145
""",
}


@pytest.mark.parametrize(("pool", "method"), [("Pool", "fork"), ("Pool", "spawn"),
                                              ("ProcessPoolExecutor", "forkserver"), ("joblib", "loky")])
def test_a_reused_worker_puts_each_task_below_the_span_it_was_submitted_from(
        tmp_path: Path, pool: str, method: str) -> None:
    if pool == "joblib":
        pytest.importorskip("joblib")
    run_program(WORK + f"""
if __name__ == "__main__":
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    method = "{method}"
    ci.profile(flush_interval=60)
    {textwrap.indent(textwrap.dedent(SUBMIT_FROM_TWO_SCOPES[pool]), "    ").strip()}
""", tmp_path)
    spans = read_spool(tmp_path / ".cirron" / "spool")["spans"]
    roots = {s["id"]: s for s in by_name(spans, "cirron.process")}
    (a,), (b,) = by_name(spans, "a"), by_name(spans, "b")
    work = by_name(spans, "work")
    assert sorted(s["attrs"]["n"] for s in work) == list(range(20))
    for s in work:
        root = roots[s["parent_id"]]
        assert root["parent_id"] == (a if s["attrs"]["n"] < 10 else b)["id"], s["attrs"]
        assert s["pid"] == root["pid"] != a["pid"] and root["end_ns"] is not None
    (session,) = listed(tmp_path)
    assert session["spans"] == len(spans) and session["marks"] == 20


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_process_started_inside_a_span_is_below_it(tmp_path: Path, method: str) -> None:
    run_program(WORK + f"""
if __name__ == "__main__":
    import multiprocessing as mp
    ci.profile(flush_interval=60)
    with ci.scope("other"):
        pass
    with ci.scope("submit"):
        procs = [mp.get_context("{method}").Process(target=work, args=(i,)) for i in range(3)]
        for p in procs: p.start()
        for p in procs: p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0]
""", tmp_path)
    data = check_workers(tmp_path, 3)
    assert len(by_name(data["spans"], "cirron.process")) == 3


def test_spawned_python_learns_the_session_from_the_environment(tmp_path: Path) -> None:
    # Any Python process started while the session runs (here through subprocess) joins it
    # through CIRRON_PARENT_SESSION, below the session root (only multiprocessing starts name
    # the span open at the start); after shutdown() the variable is gone.
    run_program("""
import os, subprocess, sys, cirron as ci
ci.profile(flush_interval=60)
assert "CIRRON_PARENT_SESSION" in os.environ
child = "import cirron as ci\\nwith ci.scope('work', n=0):\\n    ci.mark('n', 0)\\n"
with ci.scope("submit"):
    subprocess.run([sys.executable, "-c", child], check=True, timeout=60)
ci.shutdown()
assert "CIRRON_PARENT_SESSION" not in os.environ
""", tmp_path)
    check_workers(tmp_path, 1, under="cirron.session")


def test_workers_of_a_process_that_never_profiled_write_nothing(tmp_path: Path) -> None:
    run_program(WORK + """
if __name__ == "__main__":
    import multiprocessing as mp
    for method in ("fork", "spawn"):
        with mp.get_context(method).Pool(2) as pool:
            pool.map(work, range(10))
""", tmp_path)
    assert not (tmp_path / ".cirron").exists()


def test_worker_killed_mid_task_by_sigterm_keeps_what_it_closed(tmp_path: Path) -> None:
    # terminate() while the workers are still busy: every span a worker closed before the
    # signal is on disk, and the one it was in is closed as interrupted.
    run_program(WORK + """
import time

def slow(n):
    with ci.scope("work", n=n):
        ci.mark("n", n)
    if n >= 20:
        with ci.scope("stuck"):
            open(f"stuck-{n}", "w").close()
            time.sleep(120)
    return n

if __name__ == "__main__":
    import multiprocessing as mp
    ci.profile(flush_interval=60)
    with ci.scope("submit"):
        pool = mp.get_context("spawn").Pool(2)
        results = [pool.apply_async(slow, (i,)) for i in range(22)]
        for r in results[:20]:
            r.get(60)
        deadline = time.monotonic() + 60
        while not (os.path.exists("stuck-20") and os.path.exists("stuck-21")):
            assert time.monotonic() < deadline, "the workers never got stuck"
            time.sleep(0.02)
        pool.terminate()
        pool.join()
""", tmp_path)
    data = read_spool(tmp_path / ".cirron" / "spool")
    work = by_name(data["spans"], "work")
    assert list(range(20)) == sorted(s["attrs"]["n"] for s in work)[:20]
    stuck = by_name(data["spans"], "stuck")
    assert len(stuck) == 2 and all(s["end_ns"] is not None and s["attrs"].get("interrupted") == "SIGTERM" for s in stuck)


def test_worker_killed_by_sigkill_is_counted_and_named(tmp_path: Path) -> None:
    # SIGKILL leaves a worker no chance to write: the parent names it in health() and in its
    # one exit line, with what the worker last reported holding unwritten; what the worker
    # flushed before is kept.
    result = run_program(WORK + """
import glob, json, time

def killed(n):
    work(n)
    ci.flush()
    with ci.scope("lost"):
        ci.mark("gone", 1)
        ci.mark("gone", 2)
    (mark,) = glob.glob(f".cirron/spool/.live/*.{os.getpid()}.worker")
    deadline = time.monotonic() + 60
    while json.loads(open(mark).read() or "{}") != {"spans": 1, "marks": 2}:  # its flush thread reports
        assert time.monotonic() < deadline, open(mark).read()
        time.sleep(0.01)
    os.kill(os.getpid(), 9)

if __name__ == "__main__":
    import multiprocessing as mp
    ci.profile(flush_interval=60)
    with ci.scope("submit"):
        p = mp.get_context("spawn").Process(target=killed, args=(0,))
        p.start()
        p.join(90)
        assert p.exitcode == -9
    ci.shutdown()
    h = ci.health()
    print(json.dumps({"pid": p.pid, "lost": h["workers_lost"], "unwritten": h["workers_lost_unwritten"]}))
""", tmp_path, expect_loss=True)
    report = json.loads(result.stdout)
    assert report["lost"] == [report["pid"]]
    assert report["unwritten"] == {"spans": 1, "marks": 2}
    (line,) = result.stderr.splitlines()
    assert f"1 worker process (pid {report['pid']}) ended before writing" in line
    assert "1 span and 2 marks by its last report" in line
    data = read_spool(tmp_path / ".cirron" / "spool")
    assert by_name(data["spans"], "work") and not by_name(data["spans"], "lost")


@pytest.mark.slow
def test_gridsearchcv_n_jobs_2_records_every_fit(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    run_program("""
import cirron as ci, numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
if __name__ == "__main__":
    ci.profile(flush_interval=60)
    X = np.random.RandomState(0).rand(60, 3); y = np.array([0, 1] * 30)
    grid = {"C": [0.1 * (i + 1) for i in range(20)]}
    with ci.scope("submit"):
        ci.wrap(GridSearchCV(LogisticRegression(max_iter=50), grid, cv=3, n_jobs=2)).fit(X, y)
""", tmp_path, timeout=300)
    data = read_spool(tmp_path / ".cirron" / "spool")
    spans = data["spans"]
    roots = {s["id"] for s in by_name(spans, "cirron.process")}
    in_workers = [s for s in spans.values() if s["parent_id"] in roots]
    assert sum(s["name"] == "fit" for s in in_workers) == 60  # 20 candidates x 3 folds
    assert sum(s["name"] == "score" for s in in_workers) == 60
    (session,) = listed(tmp_path)
    # + the search's own fit and its refit in the parent, the roots, submit, the session root
    assert session["spans"] == 120 + 2 + len(roots) + 2


def test_dataloader_num_workers_2(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    run_program("""
import cirron as ci, torch
from torch.utils.data import DataLoader, Dataset

class Items(Dataset):
    def __len__(self):
        return 64
    def __getitem__(self, i):
        with ci.scope("work", n=i):
            ci.mark("n", i)
        return torch.tensor([float(i)])

if __name__ == "__main__":
    ci.profile(flush_interval=60)
    with ci.scope("submit"):
        seen = sum(len(b) for b in DataLoader(Items(), batch_size=4, num_workers=2))
    assert seen == 64
""", tmp_path, timeout=180)
    check_workers(tmp_path, 64)


def test_four_ranks_share_one_spool(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import cirron as ci
        ci.profile(flush_interval=0.02)
        for i in range(200):
            with ci.scope("step", i=i):
                ci.mark("loss", i)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, RANK=str(r), WORLD_SIZE="4", LOCAL_RANK=str(r % 2),
                                       TORCHELASTIC_RUN_ID="run-16"))
             for r in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    data = read_spool(tmp_path / ".cirron" / "spool")
    roots = by_name(data["spans"], "cirron.session")
    assert sorted(r["attrs"]["rank"] for r in roots) == [0, 1, 2, 3]
    assert {r["attrs"]["world_size"] for r in roots} == {4}
    assert sorted(r["attrs"]["local_rank"] for r in roots) == [0, 0, 1, 1]
    assert {r["attrs"]["run_id"] for r in roots} == {"run-16"}
    assert len(by_name(data["spans"], "step")) == 800 and len(data["marks"]) == 800
    names = [p.name for p in batch_files(tmp_path / ".cirron" / "spool")]
    assert len(names) == len(set(names))
    sessions = listed(tmp_path)
    assert sorted(s["spans"] for s in sessions) == [201] * 4 and sum(s["marks"] for s in sessions) == 800


def test_import_stays_light_outside_a_worker(tmp_path: Path) -> None:
    # Joining a parent's session is decided at `import cirron`; a process that is not a worker
    # must not pay for the spool reader to find that out.
    result = run_program("""
import sys, cirron
assert "cirron.spool" not in sys.modules, sorted(m for m in sys.modules if m.startswith("cirron"))
""", tmp_path)
    assert result.stderr == ""
