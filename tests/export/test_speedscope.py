"""Opt-in: speedscope (from the npm registry) opens the Perfetto/Chrome export and groups spans
by name. Run with ``CIRRON_TEST_SPEEDSCOPE=1`` (needs ``node`` and ``npm``; the package is
fetched with ``npm pack speedscope@1.25.0``, or taken from ``CIRRON_SPEEDSCOPE_DIR``, an
unpacked package)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from spool_factory import SpoolFactory
from typer.testing import CliRunner

from cirron_cli.app import app

pytestmark = pytest.mark.skipif(not os.environ.get("CIRRON_TEST_SPEEDSCOPE"),
                                reason="set CIRRON_TEST_SPEEDSCOPE=1 (needs node and npm) to run it")

SPEEDSCOPE = "speedscope@1.25.0"


def _speedscope_dir(tmp_path: Path) -> Path:
    if os.environ.get("CIRRON_SPEEDSCOPE_DIR"):
        return Path(os.environ["CIRRON_SPEEDSCOPE_DIR"])
    if not shutil.which("npm"):
        pytest.skip("npm not found")
    out = subprocess.run(["npm", "pack", SPEEDSCOPE, "--silent"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=180, check=True).stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / out) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "package"


def test_speedscope_groups_spans_by_name(factory: SpoolFactory, tmp_path: Path) -> None:
    if not shutil.which("node"):
        pytest.skip("node not found")
    s = factory.session(epochs=3)
    trace = tmp_path / "t.perfetto.json"
    r = CliRunner().invoke(app, ["traces", "export", "--format", "perfetto", "--output", str(trace),
                                 "--spool", str(factory.spool_dir)])
    assert r.exit_code == 0, r.output
    pkg = _speedscope_dir(tmp_path)
    script = Path(__file__).with_name("speedscope_import.mjs")
    res = subprocess.run(["node", str(script), str(pkg), str(trace)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    (profile,) = json.loads(res.stdout)
    frames = {f["name"]: f for f in profile["frames"]}
    # one frame per span name, whatever the index or id of each span
    assert sorted(frames) == sorted({"cirron.session", "epoch", "data_load", "forward", "backward", "optimizer_step"})
    assert all(f["key"] == f["name"] for f in profile["frames"])
    epochs = [sp for sp in s["spans"] if sp["name"] == "epoch"]
    total_us = sum(sp["end_ns"] - sp["start_ns"] for sp in epochs) / 1000
    assert frames["epoch"]["total"] == pytest.approx(total_us)
    fwd_us = sum(sp["end_ns"] - sp["start_ns"] for sp in s["spans"] if sp["name"] == "forward") / 1000
    assert frames["forward"]["total"] == pytest.approx(fwd_us) and frames["forward"]["self"] == pytest.approx(fwd_us)
