"""Progress feedback for long runs: per-site status lines and a round progress bar.

The ServerApp writes one status line per site and one summary line per round
into its log (these are the site's public reply fields: status, steps, train
seconds, cumulative ε). ``fedsynth simulate`` and ``fedsynth server`` stream
that log; :class:`RoundProgress` reads the summary lines from the stream and
drives a ``rich`` progress bar on the terminal, so the bar works the same for a
simulation and a deployment, however far away the ServerApp runs.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shared import keys

_ROUND_DONE = re.compile(r"round (\d+)/(\d+) done in ([\d.]+)s.*ε spent so far: ([\d.]+|n/a)")


def site_status_lines(server_round: int, replies: Iterable[Any]) -> list[str]:
    """One line per site reply: trained or declined, steps, seconds, cumulative ε.

    ``replies`` are :class:`server.strategy.SiteReply` objects.
    """
    lines = []
    for rep in sorted(replies, key=lambda r: r.site):
        eps = rep.privacy.get(keys.EPSILON, 0.0)
        if rep.trained:
            secs = rep.privacy.get(keys.TRAIN_SECONDS)
            took = f" in {secs:.1f}s" if secs is not None else ""
            lines.append(
                f"round {server_round}: site {rep.site} trained "
                f"{int(rep.privacy.get(keys.STEPS, 0))} DP steps{took}, cumulative ε={eps:.4f}"
            )
        else:
            lines.append(
                f"round {server_round}: site {rep.site} declined ({rep.reason}), "
                f"cumulative ε={eps:.4f}"
            )
    return lines


def round_summary(
    server_round: int, rounds: int, seconds: float, trained: int, replied: int, epsilon: float
) -> str:
    """The per-round line that :class:`RoundProgress` parses."""
    eps = f"{epsilon:.4f}" if replied else "n/a"
    return (
        f"round {server_round}/{rounds} done in {seconds:.1f}s: {trained}/{replied} site(s) "
        f"trained; ε spent so far: {eps} (largest cumulative ε over sites)"
    )


class RoundProgress:
    """A round progress bar driven by the ServerApp's streamed log lines.

    Parameters
    ----------
    stream : TextIO
        Terminal to draw on (stderr by default). When it is not a terminal the
        bar is not drawn and log lines pass through unchanged.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.console = Console(file=stream or sys.stderr)
        self.progress = Progress(
            TextColumn("[bold]rounds"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=False,
        )
        self.task: Any = None

    def __enter__(self) -> RoundProgress:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()

    def feed(self, line: str) -> None:
        """Advance the bar when ``line`` is a round summary."""
        match = _ROUND_DONE.search(line)
        if match is None:
            return
        done, total = int(match.group(1)), int(match.group(2))
        status = f"last round {float(match.group(3)):.1f}s, ε so far {match.group(4)}"
        if self.task is None:
            self.task = self.progress.add_task("rounds", total=total, status=status)
        self.progress.update(self.task, completed=done, total=total, status=status)

    def echo(self, line: str) -> None:
        """Print a log line above the bar."""
        self.progress.console.print(line.rstrip("\n"), markup=False, highlight=False)
