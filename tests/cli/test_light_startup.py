"""`cirron traces list` and `spool list` on a warm index run without the heavy libraries:
each costs tens of milliseconds of import, more than a warm list's own work. They stay for the
commands that use them (rich for wide-character tables and --help, numpy for view and ranks,
pyarrow for exports)."""

from __future__ import annotations

import subprocess
import sys

from cirron.spool.index import index_path

HEAVY = {"pyarrow", "numpy", "pandas", "polars", "duckdb", "pydantic", "rich", "httpx", "anyio", "yaml",
         "safetensors", "torch", "uvicorn", "starlette"}

_SCRIPT = """
import sys
sys.argv = ["cirron", *sys.argv[1:]]
from cirron_cli.app import main
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r} or m.startswith("cirron.export"))))
"""


def _loaded_after(*argv: str) -> tuple[str, list[str]]:
    out = subprocess.run([sys.executable, "-c", _SCRIPT.format(heavy=HEAVY), *argv],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    *printed, loaded = out.stdout.splitlines()
    return "\n".join(printed), loaded.split()


def test_listing_commands_with_a_warm_index_run_without_heavy_libraries(factory) -> None:
    factory.session()
    for command in ("traces", "spool"):  # the first runs fill the index (they may read batch files)
        _loaded_after(command, "list", "--spool", str(factory.spool_dir))
    assert index_path(factory.spool_dir).exists()
    for command in ("traces", "spool"):
        printed, loaded = _loaded_after(command, "list", "--spool", str(factory.spool_dir))
        assert "┌" in printed  # the command drew its table
        assert loaded == [], command


def test_the_early_parse_of_batch_files_imports_no_heavy_library() -> None:
    """An export starts parsing batch files (cirron.spool.prefetch) before it imports pyarrow: the
    parse runs beside that import only if it needs neither pyarrow nor numpy itself."""
    code = ("import sys, cirron.spool.prefetch\n"
            f"print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []
