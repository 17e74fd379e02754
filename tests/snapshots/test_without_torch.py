"""Snapshots of numpy arrays work in a process where torch cannot be imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: This checkout: the child imports its cirron, whatever an installed copy points at.
REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys
sys.modules["torch"] = None          # any `import torch` now raises ImportError
import numpy as np
import cirron as ci
from cirron import Cirron

c = Cirron(spool_dir=".cirron/spool", snapshots="full", flush_interval=60)
c.profile()
w = {"w": np.arange(4, dtype=np.float32)}
c.wrap(w)
for _ in c.epochs(range(2)):
    w["w"] *= 2
c.shutdown()
assert "torch" not in sys.modules or sys.modules["torch"] is None
print("ok")
"""


def test_numpy_only_snapshots(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={"CIRRON_NO_PROJECT_FILE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    blobs = sorted((tmp_path / ".cirron" / "snapshots").glob("*/weights.safetensors"))
    assert len(blobs) == 2
    from cirron import safetensors_io as st

    vals = sorted(st.read_values(h, h.get("w"), 0, 4) for h in (st.read_header(b) for b in blobs))
    assert vals == [[0.0, 2.0, 4.0, 6.0], [0.0, 4.0, 8.0, 12.0]]
