"""Serve the viewer: bind first (so a busy port is a clear error), print the URL, run uvicorn
until Ctrl-C."""

from __future__ import annotations

import ipaddress
import socket
import threading
import webbrowser
from collections.abc import Callable, Sequence
from pathlib import Path


class ListenError(OSError):
    """The address cannot be listened on."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot resolve host {host}: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    # with its protocol named (IPPROTO_TCP), asyncio turns Nagle's algorithm off on each connection
    # it accepts; without, an answer's body waited for the ACK of its headers (40 ms of delayed ACK
    # on each request after a connection's first)
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def url_for(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def open_in_browser(url: str, warn: Callable[[str], None]) -> None:
    """Hand ``url`` to the user's browser (``$BROWSER``, else the desktop's); say so when none took it."""
    if not webbrowser.open(url):
        warn(f"--open: no web browser could be started here; open {url} yourself")


def serve(spools: Sequence[Path], host: str, port: int, open_browser: bool = False,
          echo: Callable[[str], None] = print, warn: Callable[[str], None] = print) -> None:
    """Serve ``spools`` on ``host:port`` until interrupted (returns normally on Ctrl-C)."""
    import uvicorn

    from cirron.ui.app import create_app
    from cirron.ui.data import SpoolData

    data = SpoolData(spools)
    data.prepare()
    app = create_app(data)
    sock = bind(host, port)
    url = url_for(sock, host)
    if not is_loopback(host):
        warn(f"listening on {host}: anyone who can reach this machine on that port can read these traces "
             "(the viewer has no authentication)")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    try:
        echo(f"cirron ui: serving {', '.join(str(s) for s in spools)}")
        echo(f"cirron ui: open {url}  (Ctrl-C to stop)")
        if open_browser:
            threading.Thread(target=open_in_browser, args=(url, warn), daemon=True).start()
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # before uvicorn took over SIGINT, or re-raised by it after a clean stop
        pass
    finally:
        sock.close()
        data.close()  # the temporary files of the sessions read piece by piece
