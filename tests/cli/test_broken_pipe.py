"""`cirron traces view | head`: the reader going away ends the command quietly."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from cirron import Cirron

CIRRON = shutil.which("cirron", path=str(Path(sys.executable).parent)) or "cirron"


def test_output_cut_short_by_its_reader_is_no_traceback(tmp_path: Path) -> None:
    c = Cirron(spool_dir=tmp_path / ".cirron" / "spool")
    c.profile()
    for i in range(3000):  # far more tree than a pipe buffer holds
        with c.scope("step", index=i):
            c.mark("loss", 0.5)
    c.shutdown()
    proc = subprocess.Popen([CIRRON, "traces", "view"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    head = proc.stdout.read(200)
    proc.stdout.close()  # what `head -c 200` does once it has its bytes
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert head.startswith(b"cirron.session")
    assert "Traceback" not in err and "Error" not in err, err
    assert proc.returncode in (0, 1)  # click's convention for a closed stdout is 1
