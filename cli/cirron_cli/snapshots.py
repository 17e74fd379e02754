"""`cirron traces snapshots` / `cirron traces snapshot` (being built)."""
import typer


def register(traces_app: typer.Typer) -> None:
    return None
