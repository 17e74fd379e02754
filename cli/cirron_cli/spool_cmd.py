"""`cirron spool …` (being built: list, clear)."""
import typer

spool_app = typer.Typer(help="File-level view of the spool's batch files.", no_args_is_help=True)
