"""Per-site status lines and the round progress bar."""

from __future__ import annotations

import io

from server.progress import RoundProgress, round_summary, site_status_lines
from server.strategy import SiteReply
from shared import keys


def reply(site: str, trained: bool, eps: float) -> SiteReply:
    privacy = {keys.EPSILON: eps, keys.STEPS: 45.0 if trained else 0.0, keys.TRAIN_SECONDS: 1.2}
    return SiteReply(
        1,
        site,
        trained,
        "" if trained else "budget exhausted",
        privacy,
        "rdp",
        False,
        "simulation",
        None,
    )


def test_one_status_line_per_site_with_steps_seconds_and_epsilon() -> None:
    lines = site_status_lines(3, [reply("site-1", False, 2.5), reply("site-0", True, 0.75)])

    assert lines == [
        "round 3: site site-0 trained 45 DP steps in 1.2s, cumulative ε=0.7500",
        "round 3: site site-1 declined (budget exhausted), cumulative ε=2.5000",
    ]


def test_progress_bar_follows_round_summaries() -> None:
    out = io.StringIO()
    with RoundProgress(out) as bar:
        for rnd in (1, 2):
            line = round_summary(rnd, 5, 3.25, 2, 3, 0.5 * rnd)
            bar.echo(line)
            bar.feed(line)
        bar.feed("an unrelated log line")
        task = bar.progress.tasks[0]

    assert (task.completed, task.total) == (2, 5)
    assert "ε so far 1.0000" in task.fields["status"]
    assert "round 2/5 done in 3.2s: 2/3 site(s) trained; ε spent so far: 1.0000" in out.getvalue()
