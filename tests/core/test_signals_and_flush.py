"""Issue 16: signals hand on exactly as without cirron, flush()/health() tell the truth, and the
environment (HOME, config file, spool permissions) never crashes ci.profile(). Real processes."""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core.helpers import by_name, read_spool

STEPS_SCRIPT = """
    import os, sys, time, cirron as ci
    if os.environ.get("WITH_CIRRON") == "1":
        ci.profile(flush_interval=5)
    {setup}
    for i in range(100000):
        with ci.scope("step", i=i):
            ci.mark("x", i)
            time.sleep(0.002)
        print(i, flush=True)
"""


def start(code: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    # A generous shutdown budget: these tests are about what happens, not how fast on a busy machine.
    env = {"CIRRON_SHUTDOWN_TIMEOUT": "30", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, **env))


def signal_after(proc: subprocess.Popen, lines: int, sig: int, timeout: float = 90) -> tuple[list[str], str]:
    """Read ``lines`` stdout lines, send ``sig``, then collect the rest; bounded by ``timeout``.

    The lines are read from the pipe itself: ``communicate()`` reads the pipe too, so whatever a
    buffered ``proc.stdout.readline()`` had taken in beyond the lines it returned would be lost
    (a busy machine lets the program print several lines before the test reads one)."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    head = b""
    while head.count(b"\n") < lines:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            proc.kill()
            proc.communicate()
            got = head.count(b"\n")
            raise AssertionError(f"the process printed {got} of {lines} lines, then "
                                 + ("stopped" if ready else f"nothing more within {timeout} s"))
        head += chunk
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the process did not end after the signal") from None
    return head.decode().split() + out.split(), err


def stopped_cleanly(code: str, cwd: Path, sig: int, last_line: str) -> tuple[list[str], dict]:
    """Run ``code``, signal it after 5 lines; it must end with status 0 and ``last_line``."""
    proc = start(code, cwd)
    out, err = signal_after(proc, 5, sig)
    assert proc.returncode == 0, err
    assert "not kept" not in err, err
    assert out[-1] == last_line
    return out, read_spool(cwd / ".cirron" / "spool")


@pytest.mark.slow
def test_sigterm_at_random_moments_keeps_every_closed_span_and_the_exit_status(tmp_path: Path) -> None:
    rng = random.Random(16)
    for run in range(10):
        cwd = tmp_path / f"run{run}"
        cwd.mkdir()
        proc = start(STEPS_SCRIPT.format(setup=""), cwd, {"WITH_CIRRON": "1"})
        closed, err = signal_after(proc, rng.randint(1, 150), signal.SIGTERM)
        assert proc.returncode == -signal.SIGTERM, err
        assert "Traceback" not in err
        data = read_spool(cwd / ".cirron" / "spool")
        on_disk = {s["attrs"]["i"]: s for s in by_name(data["spans"], "step")}
        done = [int(i) for i in closed if i.isdigit()]
        assert done and all(on_disk[i]["end_ns"] is not None for i in done)
        assert all("interrupted" not in on_disk[i]["attrs"] for i in done)
        # the one open at the signal is closed as interrupted; the session root is closed too
        interrupted = [s for s in on_disk.values() if s["attrs"].get("interrupted") == "SIGTERM"]
        assert len(interrupted) <= 1 and all(s["end_ns"] is not None for s in on_disk.values())
        (root,) = by_name(data["spans"], "cirron.session")
        assert root["end_ns"] is not None
        assert sum(1 for m in data["marks"].values() if m["name"] == "x") >= len(done)


def test_sigterm_exit_status_is_the_same_without_cirron(tmp_path: Path) -> None:
    proc = start(STEPS_SCRIPT.format(setup=""), tmp_path, {"WITH_CIRRON": "0"})
    signal_after(proc, 3, signal.SIGTERM)
    assert proc.returncode == -signal.SIGTERM
    assert not (tmp_path / ".cirron").exists()


def test_host_handler_installed_before_runs_and_session_goes_on(tmp_path: Path) -> None:
    # The host's own SIGTERM handler (set before ci.profile) asks the loop to stop: it must still
    # run, the program must go on to its own clean end, and the spans after the signal are kept.
    code = """
        import signal, time, cirron as ci
        stop = []
        signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
        ci.profile(flush_interval=60)
        i = 0
        while not stop:
            with ci.scope("step", i=i):
                time.sleep(0.002)
            print(i, flush=True)
            i += 1
        with ci.scope("after_signal"):
            pass
        print("clean-exit", flush=True)
    """
    out, data = stopped_cleanly(code, tmp_path, signal.SIGTERM, "clean-exit")
    assert by_name(data["spans"], "after_signal")
    assert len(by_name(data["spans"], "step")) == len(out) - 1


# A signal handled while the main thread holds the lock of the Event that ThreadRuntime.call waits
# on (seen in a Pool worker: SIGTERM from terminate() while the worker shut its session down at its
# exit, handled inside Event.wait; the handler's own shutdown waited for that lock forever).
HELD_EVENT = """
    import os, signal, threading, cirron as ci

    class HeldEvent(threading.Event):
        def wait(self, timeout=None):
            with self._cond:
                if SEND[0]:
                    SEND[0] = False
                    signal.raise_signal(SIG)  # handled at the next call, with the lock held
                signaled = self._flag
                if not signaled:
                    signaled = self._cond.wait(timeout)
                return signaled

    SEND = [False]
    SIG = signal.SIGTERM
    {setup}
    ci.profile(flush_interval=60)
    runtime = ci._DEFAULT._runtime
    ready, runtime._ready = runtime._ready, HeldEvent()
    ready.wait(10)
    runtime._ready.set()
    with ci.scope("work"):
        ci.mark("m", 1)
    SEND[0] = True
    {call}
    print("went on", flush=True)
"""


@pytest.mark.parametrize("call", ["ci.shutdown()", "ci.flush()"])
def test_sigterm_during_our_own_shutdown_or_flush_is_handled_after_it(tmp_path: Path, call: str) -> None:
    proc = start(HELD_EVENT.format(setup="", call=call), tmp_path)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the program hung: its SIGTERM handler waited on a lock its own thread held") from None
    assert proc.returncode == -signal.SIGTERM, err
    assert out == "" and "Traceback" not in err
    data = read_spool(tmp_path / ".cirron" / "spool")
    (work,) = by_name(data["spans"], "work")
    (root,) = by_name(data["spans"], "cirron.session")
    assert work["end_ns"] is not None and root["end_ns"] is not None and len(data["marks"]) == 1


def test_host_handler_caught_during_our_flush_runs_after_it(tmp_path: Path) -> None:
    setup = "SEEN = []\n    signal.signal(SIG, lambda s, f: SEEN.append(s))"
    proc = start(HELD_EVENT.format(setup=setup, call="assert ci.flush() and SEEN == [SIG]"), tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out == "went on\n"


def test_sigint_raises_keyboardinterrupt_as_without_cirron_and_spans_record_it(tmp_path: Path) -> None:
    code = """
        import time, cirron as ci
        ci.profile(flush_interval=60)
        try:
            i = 0
            while True:
                with ci.scope("step", i=i):
                    time.sleep(0.002)
                print(i, flush=True)
                i += 1
        except KeyboardInterrupt:
            print("caught", flush=True)
    """
    out, data = stopped_cleanly(code, tmp_path, signal.SIGINT, "caught")
    steps = by_name(data["spans"], "step")
    assert all(s["end_ns"] is not None for s in steps)
    assert len(steps) >= len(out) - 1


def test_handler_installed_after_profile_is_never_replaced(tmp_path: Path) -> None:
    code = """
        import signal, os, time, cirron as ci
        ci.profile(flush_interval=60)
        mine = lambda s, f: print("host handler", flush=True)
        signal.signal(signal.SIGTERM, mine)
        with ci.scope("x"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the host's handler runs once for one signal: cirron never sends it again
        assert signal.getsignal(signal.SIGTERM) is mine
        ci.shutdown()
        assert signal.getsignal(signal.SIGTERM) is mine  # shutdown leaves the host's handler
        print("end", flush=True)
    """
    proc = start(code, tmp_path)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert out.split("\n")[:2] == ["host handler", "end"]


def test_shutdown_gives_back_the_earlier_handler(tmp_path: Path) -> None:
    code = """
        import signal, cirron as ci
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        ci.profile(flush_interval=60)
        assert signal.getsignal(signal.SIGTERM) != before[0]
        ci.shutdown()
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
        print("ok")
    """
    proc = start(code, tmp_path)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0 and out.strip() == "ok", err


def test_sigterm_ends_a_main_thread_asleep_in_c_as_without_cirron(tmp_path: Path) -> None:
    # The signal's C-level handler runs in another thread, so the main thread's sleep on a
    # multiprocessing lock is never interrupted and no Python handler would run: a Pool worker
    # woken by its lock's owner but not yet scheduled when terminate() comes is in that state.
    # Without cirron the default action ends the process; with cirron it must end too, -15,
    # with the span it was in closed as interrupted and on disk.
    code = """
        import signal, threading
        import multiprocessing as mp
        import cirron as ci

        def main_thread_asleep():
            with open(f"/proc/self/task/{threading.main_thread().native_id}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "S"

        def send_from_here():
            while not main_thread_asleep():
                pass
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

        ci.profile(flush_interval=60)
        lock = mp.get_context("fork").Lock()
        lock.acquire()
        threading.Thread(target=send_from_here, daemon=True).start()
        with ci.scope("waiting"):
            lock.acquire()
    """
    proc = start(code, tmp_path)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("SIGTERM did not end a process whose main thread sleeps in C") from None
    assert proc.returncode == -signal.SIGTERM, err
    (waiting,) = by_name(read_spool(tmp_path / ".cirron" / "spool")["spans"], "waiting")
    assert waiting["end_ns"] is not None and waiting["attrs"]["interrupted"] == "SIGTERM"


def test_the_signal_wakeup_fd_is_left_to_the_host(tmp_path: Path) -> None:
    # cirron watches the wakeup fd only while no one else has set one, and gives it back.
    code = """
        import os, signal, cirron as ci
        r, w = os.pipe()
        os.set_blocking(w, False)
        ci.profile(flush_interval=60)
        theirs_later = signal.set_wakeup_fd(w)  # the host sets its own after profile(): it wins
        ci.shutdown()
        assert signal.set_wakeup_fd(-1) == w, "shutdown took the host's wakeup fd away"
        signal.set_wakeup_fd(w)
        ci.profile(flush_interval=60)                 # set before profile(): cirron leaves it alone
        assert signal.set_wakeup_fd(w) == w
        ci.shutdown()
        assert signal.set_wakeup_fd(-1) == w
        print("ok", theirs_later != -1)
    """
    proc = start(code, tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["ok", "True"]


# -- the environment: run without the privilege to read what the file modes forbid ---------------


def unprivileged(argv: list[str]) -> list[str]:
    """``argv`` run without the power to ignore file modes (root without CAP_DAC_OVERRIDE)."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is not installed: file modes cannot be enforced")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *argv]


def run_unprivileged(code: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(unprivileged([sys.executable, "-c", textwrap.dedent(code)]), cwd=cwd,
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, **env))


def locked_dir(path: Path, mode: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)  # someone else's: root without its capabilities is refused
    path.chmod(mode)
    return path


READ_ONLY_SCRIPT = """
    import json, cirron as ci
    ci.profile(spool_dir="ro/spool", flush_interval=60)
    with ci.scope("a"):
        ci.mark("m", 1)
    ok = ci.flush()
    h = ci.health()
    print(json.dumps({"flush": ok, "last_flush_ok": h["last_flush_ok"], "problem": h["last_flush_problem"],
                      "last_error": h["last_error"], "trace": json.dumps(ci.trace(format="dict"))}))
"""


def test_read_only_spool_flush_is_false_and_exit_warns_once(tmp_path: Path) -> None:
    locked_dir(tmp_path / "ro", 0o555)
    try:
        result = run_unprivileged(READ_ONLY_SCRIPT, tmp_path, {})
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["flush"] is False and report["last_flush_ok"] is False
    assert "spool" in report["problem"] and "Permission denied" in report["last_error"]
    assert '"name": "a"' in report["trace"]  # still recorded, in memory
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cirron: records of session") and "spool: 2 spans and 1 mark" in lines[0]
    assert "write_error" in lines[0] and "Traceback" not in result.stderr


def test_writable_spool_flush_is_true_and_exit_is_silent(tmp_path: Path) -> None:
    result = run_unprivileged(READ_ONLY_SCRIPT.replace("ro/spool", "rw/spool"), tmp_path, {})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["flush"] is True and report["last_flush_ok"] is True and report["problem"] is None
    assert result.stderr == ""


@pytest.mark.parametrize("home", ["unreadable", "missing", "unset"])
def test_unreadable_home_or_config_never_stops_profile(tmp_path: Path, home: str) -> None:
    home_dir = tmp_path / "home"
    (home_dir / ".cirron").mkdir(parents=True)
    (home_dir / ".cirron" / "config.toml").write_text("flush_interval = 3\n")
    env = {"HOME": str(home_dir), "CIRRON_CONFIG_FILE": ""}
    if home == "unreadable":
        locked_dir(home_dir, 0o700)
    elif home == "missing":
        env["HOME"] = str(tmp_path / "nowhere")
    code = """
        import os, json, cirron as ci
        if os.environ.get("UNSET_HOME"):
            del os.environ["HOME"]
        ci.profile(flush_interval=60)
        with ci.scope("work"):
            pass
        print(json.dumps({"flush": ci.flush(), "problems": ci.health()["config_problems"]}))
    """
    if home == "unset":
        env["UNSET_HOME"] = "1"
    try:
        result = run_unprivileged(code, tmp_path, env)
    finally:
        home_dir.chmod(0o755)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["flush"] is True
    assert "Traceback" not in result.stderr
    if home == "unreadable":
        assert report["problems"] and "cannot read" in report["problems"][0]
        assert result.stderr.count("cirron: ") == 1 and "config.toml" in result.stderr
    else:  # a missing file is not a problem; an unset HOME still finds the passwd entry
        assert report["problems"] == [] and result.stderr == ""
    assert by_name(read_spool(tmp_path / ".cirron" / "spool")["spans"], "work")
