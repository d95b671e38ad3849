"""What the demo shows while it runs: a live panel on a terminal, plain lines elsewhere.

The panel reads the run's timeline a few times a second: events sent, labels,
answers (and how many came before any model existed), who answers (a version,
or an online learner beside the champion), the rolling accuracy, and the loop's
own events as they arrive. Redirected to a file or a pipe (CI, tests), the same
events are printed as timestamped lines with a progress line every few seconds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table

from driftloop_cli.demo.timeline import Served, Timeline, accuracy

PLAIN_PROGRESS_EVERY_S = 10.0


class DemoView:
    def __init__(
        self, console: Console, timeline: Timeline, *, total: int, onset: int | None, window: int
    ) -> None:
        self._console = console
        self._timeline = timeline
        self._total = total
        self._onset = onset
        self._window = window
        self._messages: deque[str] = deque(maxlen=9)
        self._began = time.monotonic()
        self._last_plain = 0.0
        self.phase = "starting the stack"
        self.live = console.is_terminal

    def elapsed(self) -> float:
        return time.monotonic() - self._began

    def say(self, message: str) -> None:
        line = f"{self.elapsed():6.1f}s  {message}"
        self._messages.append(line)
        if not self.live:
            self._console.print(line, markup=False, highlight=False, soft_wrap=True)

    def tick(self) -> None:
        """A progress line now and then when there is no live panel."""
        if self.live or self.elapsed() - self._last_plain < PLAIN_PROGRESS_EVERY_S:
            return
        self._last_plain = self.elapsed()
        figures = self.figures()
        self._console.print(
            f"{self.elapsed():6.1f}s  {self.phase}: {figures['sent']}/{self._total} events, "
            f"serving {figures['version']}, rolling accuracy {figures['accuracy']}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    def figures(self) -> dict[str, str]:
        served = self._timeline.served
        answered = [s for s in served if s.status == "ok"]
        rolling = accuracy(answered[-self._window :])
        return {
            "sent": str(len(self._timeline.sent)),
            "labels": str(self._timeline.labels_sent),
            "answered": str(len(answered)),
            "no_model": str(sum(s.status == "no_model" for s in served)),
            "errors": str(sum(s.status not in ("ok", "no_model") for s in served)),
            "version": serving(answered[-1] if answered else None),
            "accuracy": f"{rolling:.1%}" if rolling is not None else "n/a",
        }

    def render(self) -> RenderableType:
        figures = self.figures()
        sent = len(self._timeline.sent)
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("phase", escape(self.phase))
        table.add_row(
            "events",
            f"{sent} / {self._total}"
            + (
                f"  (drift at {self._onset}{', passed' if sent > self._onset else ''})"
                if self._onset is not None
                else "  (stationary)"
            ),
        )
        table.add_row("", ProgressBar(total=self._total, completed=sent, width=50))
        table.add_row(
            "predictions",
            f"{figures['answered']} answered, {figures['no_model']} before any model, "
            f"{figures['errors']} errors",
        )
        table.add_row("labels sent", figures["labels"])
        table.add_row("serving", figures["version"])
        table.add_row(f"accuracy (last {self._window})", figures["accuracy"])
        log = "\n".join(escape(m) for m in self._messages) or "waiting..."
        return Panel(
            Group(table, Panel(log, title="the loop", border_style="dim")),
            title=f"driftloop demo  {self.elapsed():.0f}s",
        )

    @contextmanager
    def showing(self) -> Iterator[None]:
        if not self.live:
            yield
            return
        with Live(get_renderable=self.render, console=self._console, refresh_per_second=4):
            yield


def serving(last: Served | None) -> str:
    """Who gave the newest answer: a version, or an online learner beside the champion."""
    if last is None:
        return "no model yet"
    if not last.learner:
        return f"v{last.version}"
    return last.learner + (f" (champion v{last.version})" if last.version is not None else "")
