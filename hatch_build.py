"""Build hook: compile cirron's optional C speed-ups into the package.

Each module has a pure-Python twin, so a machine without a C compiler (or with
``CIRRON_PURE_PYTHON=1`` set) still gets a working install, only a slower hot path: a failed
compile is reported as a warning, never as a failed build.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sysconfig
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

#: (C source, its module's path inside the project without the suffix).
EXTENSIONS = [
    ("cirron/_record/_cscope.c", "cirron/_record/_cscope"),
    ("cirron/_flush/_cencode.c", "cirron/_flush/_cencode"),
    ("cirron/spool/_cbatch.c", "cirron/spool/_cbatch"),
    ("cirron/export/_cperfetto.c", "cirron/export/_cperfetto"),
    ("cirron/export/_cotlp.c", "cirron/export/_cotlp"),
    ("cirron/export/_cjson.c", "cirron/export/_cjson"),
]


def _compile_command(source: Path, target: Path) -> list[str]:
    link = sysconfig.get_config_var("LDSHARED")
    if not link:
        raise RuntimeError("this Python does not say how to link extension modules (no LDSHARED)")
    return [
        *shlex.split(link),
        *shlex.split(sysconfig.get_config_var("CCSHARED") or ""),
        "-O2",
        f"-I{sysconfig.get_paths()['include']}",
        str(source),
        "-o",
        str(target),
    ]


class NativeBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        if os.environ.get("CIRRON_PURE_PYTHON", "").strip().lower() in ("1", "true", "yes", "on"):
            self.app.display_info("CIRRON_PURE_PYTHON is set: not compiling the C speed-ups")
            for _source, module in EXTENSIONS:  # nor keeping ones an earlier build left in the tree
                (root / (module + suffix)).unlink(missing_ok=True)
            return
        if sysconfig.get_config_var("Py_GIL_DISABLED"):
            # The compiled modules rely on the GIL; a free-threaded build runs the pure-Python twins.
            self.app.display_info("free-threaded Python: not compiling the C speed-ups")
            return
        built = []
        for source, module in EXTENSIONS:
            target = root / (module + suffix)
            try:
                cmd = _compile_command(root / source, target)
                subprocess.run(cmd, check=True, capture_output=True, text=True)
            except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
                detail = getattr(exc, "stderr", "") or str(exc)
                self.app.display_warning(f"cirron: {source} not compiled, the pure-Python version will run: "
                                         f"{detail.strip().splitlines()[-1] if detail.strip() else exc}")
                continue
            built.append(module + suffix)
        if not built:
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":  # an editable install imports them from the source tree
            for rel in built:
                build_data["force_include"][str(root / rel)] = rel
