"""`cirron traces …` (being built: view, list, export, clear)."""
import typer

traces_app = typer.Typer(help="Read, view, export and clear the traces in the local spool.", no_args_is_help=True)
