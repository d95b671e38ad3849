"""`driftloop demo`: the whole loop on a built-in scenario, then `demo-report/`.

Starts the embedded stack with every service (state under
`DRIFTLOOP_HOME/demo/`, emptied first), streams seeded payments whose fraud
pattern changes at a known event, and stops when the retrained version serves
and accuracy has recovered, or at the timeout. Exit codes: 0 when the run
ended as its scenario should (drift: recovered; stationary: no drift-triggered
retraining), 1 otherwise, 2 for a bad option or a stack that cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from pathlib import Path
from typing import Annotated

import typer
from driftloop_core.logging import configure_logging
from driftloop_core.settings import load_settings
from rich.console import Console
from rich.markup import escape

from driftloop_cli.demo.driver import DemoError, DemoOptions, DemoRun, demo_settings
from driftloop_cli.demo.report import build_report, summary_markdown, write_report
from driftloop_cli.demo.scenario import ScenarioConfig, ScenarioError, build_scenario
from driftloop_cli.demo.timeline import Timeline
from driftloop_cli.demo.view import DemoView

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


async def _run(run: DemoRun, view: DemoView) -> None:
    async def follow() -> None:
        while True:
            view.phase = run.phase
            view.tick()
            await asyncio.sleep(0.25)

    follower = asyncio.create_task(follow())
    try:
        with view.showing():
            await run.run()
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for report.json, accuracy.png, summary.md.")
    ] = Path("demo-report"),
    scenario: Annotated[
        str,
        typer.Option(
            "--scenario",
            help="'drift' (the fraud pattern changes) or 'stationary' (it never does).",
        ),
    ] = "drift",
    seed: Annotated[int, typer.Option("--seed", help="Scenario seed.")] = 7,
    events: Annotated[
        int, typer.Option("--events", min=200, help="Events in the scenario (at most).")
    ] = 4800,
    drift_at: Annotated[
        float,
        typer.Option("--drift-at", help="Fraction of the events before the drift onset."),
    ] = 0.5,
    rate: Annotated[
        float, typer.Option("--rate", min=1.0, help="Events per second sent by the producer.")
    ] = 40.0,
    label_delay: Annotated[
        float, typer.Option("--label-delay", min=0.0, help="Seconds before a label follows.")
    ] = 2.0,
    timeout: Annotated[
        float, typer.Option("--timeout", min=10.0, help="Seconds of streaming at most.")
    ] = 170.0,
) -> None:
    """Run the closed loop on a built-in payments scenario and write a report."""
    if out.exists() and not out.is_dir():
        # Checked before minutes of streaming, not after.
        err.print(f"[red]--out: {escape(str(out))} exists and is not a folder[/]")
        raise typer.Exit(2)
    settings = demo_settings(load_settings().for_service("demo"))
    configure_logging("demo", "WARNING")
    # Connection refusals while the broker starts are expected; the demo reports
    # a stack that does not come up itself.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    if scenario not in ("drift", "stationary"):
        err.print(f"[red]--scenario: must be 'drift' or 'stationary', got {escape(scenario)!r}[/]")
        raise typer.Exit(2)
    try:
        config = ScenarioConfig(
            kind="drift" if scenario == "drift" else "stationary",
            seed=seed,
            events=events,
            drift_at=drift_at,
        )
        built = build_scenario(config)
    except ScenarioError as error:
        err.print(f"[red]{escape(str(error))}[/]")
        raise typer.Exit(2) from None
    options = DemoOptions(rate=rate, label_delay_s=label_delay, timeout_s=timeout)
    timeline = Timeline()
    view = DemoView(console, timeline, total=len(built), onset=built.onset, window=options.window)
    run = DemoRun(
        settings,
        built,
        options,
        log_path=settings.logs_dir / "stack.log",
        timeline=timeline,
        on_change=view.say,
    )
    console.print(
        f"driftloop demo: {scenario} scenario, seed {seed}, {len(built)} events at {rate:g}/s"
        + (f", drift at event {built.onset}" if built.onset is not None else "")
        + f"; stack output in {settings.logs_dir / 'stack.log'}"
    )
    try:
        asyncio.run(_run(run, view))
    except DemoError as error:
        err.print(f"[red]driftloop demo failed:[/] {escape(str(error))}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        run.timeline.outcome = "interrupted"

    index_of = {event.event_id: event.index for event in built}
    report = build_report(
        run.timeline,
        built.summary() | {"rate": rate, "label_delay_s": label_delay},
        built.onset,
        index_of,
        window=options.window,
    )
    if report["retrain_trace_id"]:
        # The demo keeps its state (and traces) apart from `driftloop up`'s.
        report["retrain_trace_command"] = (
            f"driftloop traces --home {shlex.quote(_shown(settings.home))} "
            f"{report['retrain_trace_id']}"
        )
    paths = write_report(report, out)
    console.print(f"\nwrote {', '.join(str(p) for p in paths)}\n")
    console.print(summary_markdown(report), markup=False, soft_wrap=True)
    ok = (
        report["outcome"] == "recovered"
        if built.onset is not None
        else report["outcome"] == "completed" and report["drift_retrains"] == 0
    )
    raise typer.Exit(0 if ok else 1)


def _shown(path: Path) -> str:
    """`path` as the user would type it here: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
