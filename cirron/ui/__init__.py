"""``cirron ui``: a local, read-only web viewer for the spool.

* :mod:`cirron.ui.data`   — spool → session views (the only module that reads the spool)
* :mod:`cirron.ui.app`    — the Starlette app: pages, JSON API, assets
* :mod:`cirron.ui.server` — bind, print the URL, serve with uvicorn until Ctrl-C

Needs the ``ui`` extra (``pip install 'cirron-trace[ui]'``: starlette, uvicorn, plotly); nothing here
is imported by ``import cirron``.
"""

from cirron._version import DISTRIBUTION

#: The packages the viewer needs, and the line that says how to get them.
UI_PACKAGES = ("starlette", "uvicorn", "plotly")
INSTALL_HINT = f"pip install '{DISTRIBUTION}[ui]'"
