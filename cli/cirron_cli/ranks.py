"""`cirron traces ranks`: which rank of a multi-process run is slow, and is it data loading."""

from __future__ import annotations

from typing import Any, Optional

import orjson
import typer

from cirron.spool.ranks import DEFAULT_THRESHOLD, RankReport, StepStats, compare_ranks
from cirron_cli import render
from cirron_cli.render import fail, format_duration_ns, style, use_color
from cirron_cli.traces import EXIT_USAGE, SpoolOpt, _pick_run, open_spools


def _ns(v: int | None) -> str:
    return "-" if v is None else format_duration_ns(v)


def _pct(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v * 100:+.0f}%" if signed else f"{v * 100:.0f}%"


def _step_json(st: StepStats) -> dict:
    return {"count": st.count,
            "wall_ns": {"p50": st.wall_p50, "p95": st.wall_p95, "max": st.wall_max, "total": st.wall_total},
            "cpu_ns": {"p50": st.cpu_p50, "p95": st.cpu_p95, "max": st.cpu_max}}


def report_json(rep: RankReport) -> dict:
    """The report as ``--json`` prints it (nanoseconds as integers)."""
    return {
        "run_id": rep.run.id,
        "step": rep.step,
        "median_step_ns": rep.median_step_ns,
        "threshold": rep.threshold,
        "stragglers": [r.rank for r in rep.stragglers],
        "ranks": [{
            "rank": r.rank, "session_id": r.session.id, "host": r.session.host, "status": r.session.status,
            "spool": str(r.session.spool.resolve()), "step_p50_ns": r.step_p50,
            "vs_median": None if r.vs_median is None else round(r.vs_median, 4),
            "data_load_share": None if r.data_load_share is None else round(r.data_load_share, 4),
            "straggler": r.straggler, "steps": {n: _step_json(st) for n, st in sorted(r.steps.items())},
        } for r in rep.ranks],
    }


def ranks_cmd(
    run: Optional[str] = typer.Option(None, "--run", help="Run id (prefix allowed); default: the newest run."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, "--threshold", metavar="FRACTION",
                                    help="Flag a rank whose median step is this much slower than the median rank's."),
    spool: list[str] = SpoolOpt,
    json_out: bool = typer.Option(False, "--json", help="Machine-readable JSON."),
    no_color: bool = typer.Option(False, "--no-color", help="Disable ANSI colour."),
) -> None:
    """Compare the ranks of one run: step times per rank, data-loading share, stragglers."""
    if threshold < 0:
        fail(f"Invalid --threshold: {threshold} (expected 0 or more, e.g. 0.1 for 10%)", EXIT_USAGE)
    cat = open_spools(spool)
    if run is not None:
        chosen = _pick_run(cat, run)
    else:
        runs = cat.runs()
        if not runs:
            if not cat.sessions:
                render.no_traces(err=True)
            else:
                typer.echo("Error: No run found: no session carries a run id (set CIRRON_RUN_ID, or launch with "
                           "torchrun)", err=True)
            raise typer.Exit(1)
        multi = [r for r in runs if len(r.sessions) > 1]
        chosen = (multi or runs)[-1]
    rep = compare_ranks(cat, chosen, threshold)
    if json_out:
        typer.echo(orjson.dumps(report_json(rep), option=orjson.OPT_INDENT_2).decode())
        return
    _render(rep, use_color(no_color))


def _render(rep: RankReport, color: bool) -> None:
    n = len(rep.ranks)
    typer.echo(f"Run {rep.run.id}  ({render.plural(n, 'rank')}, compared on {rep.step or 'nothing'} spans)")
    rows: list[list[Any]] = []
    names = sorted({name for r in rep.ranks for name in r.steps},
                   key=lambda x: (x != rep.step, x))
    for name in names:
        for r in rep.ranks:
            st = r.steps.get(name)
            if st is None:
                continue
            rows.append([name, "-" if r.rank is None else r.rank, st.count, _ns(st.wall_p50), _ns(st.wall_p95),
                         _ns(st.wall_max), _ns(st.cpu_p50), _ns(st.cpu_p95), _ns(st.cpu_max)])
    if rows:
        typer.echo(render.aligned_table(["STEP", "RANK", "COUNT", "P50 WALL", "P95 WALL", "MAX WALL", "P50 CPU",
                                         "P95 CPU", "MAX CPU"], rows, right=(1, 2, 3, 4, 5, 6, 7, 8)))
    summary = []
    for r in rep.ranks:
        flag = style("straggler", "red", "bold", color=color) if r.straggler else ""
        summary.append(["-" if r.rank is None else r.rank, render.short_id(r.session.id), r.session.host or "-",
                        _ns(r.step_p50), _pct(r.vs_median, signed=True), _pct(r.data_load_share), flag])
    typer.echo("")
    typer.echo(render.aligned_table(["RANK", "SESSION", "HOST", f"{(rep.step or 'STEP').upper()} P50", "VS MEDIAN",
                                     "DATA LOAD", ""], summary, right=(0, 3, 4, 5)))
    if not rep.stragglers:
        typer.echo(f"No straggler: every rank is within {rep.threshold * 100:.0f}% of the median rank "
                   f"({_ns(rep.median_step_ns)} per {rep.step or 'step'}).")
        return
    median_share = rep.median_data_load_share
    for r in rep.stragglers:
        why = ""
        loading = rep.waits_on_input(r)
        if loading is not None:
            why = (f"; data loading takes {_pct(r.data_load_share)} of its {rep.step} time vs {_pct(median_share)} "
                   f"on the median rank" + (" — it is waiting on input" if loading else " — not data loading"))
        typer.echo(f"Straggler: rank {r.rank} is {_pct(r.vs_median)} slower than the median rank "
                   f"({_ns(r.step_p50)} vs {_ns(rep.median_step_ns)} per {rep.step}){why}")


def register(traces_app: typer.Typer) -> None:
    traces_app.command("ranks")(ranks_cmd)
