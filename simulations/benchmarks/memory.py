"""Memory measurement for the benchmarks: process-tree RSS and a streaming child.

* :class:`TreeMemory` samples, in a background thread, the summed resident set
  of this process, its descendants, and any process sharing a descendant's
  private ``FLWR_HOME`` (Ray may re-parent its daemons), and keeps the peak.
* ``python -m simulations.benchmarks.memory stream PATH ...`` is run as a
  fresh process by ``perf.py``: it encodes a table in chunks and trains on it,
  then prints its own peak RSS as JSON, so nothing the parent allocated counts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes(pid: int) -> int:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * _PAGE


def _parents() -> dict[int, int]:
    out = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
            out[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return out


def _flwr_home(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"FLWR_HOME="):
            return item.split(b"=", 1)[1].decode(errors="replace")
    return None


def tree_pids(root: int, homes: set[str]) -> set[int]:
    """``root``, its descendants, and processes whose ``FLWR_HOME`` is in ``homes`` (updated)."""
    parents = _parents()
    found, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found.add(child)
                frontier.append(child)
    for pid in found - {root}:
        home = _flwr_home(pid)
        if home:
            homes.add(home)
    if homes:
        found |= {pid for pid in parents if pid not in found and _flwr_home(pid) in homes}
    return found


class TreeMemory:
    """Peak summed RSS of this process tree while the ``with`` block runs."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak_bytes, self.peak_processes = interval, 0, 0
        self._stop = threading.Event()
        self._homes: set[str] = set()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = tree_pids(os.getpid(), self._homes)
            total = sum(_rss_bytes(p) for p in pids)
            if total > self.peak_bytes:
                self.peak_bytes, self.peak_processes = total, len(pids)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()


def peak_rss_bytes() -> int:
    """This process's peak resident set since it started its program.

    ``VmHWM`` belongs to the address space, which ``exec`` replaces; ``ru_maxrss``
    would instead carry over the parent's peak from before the fork.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # pragma: no cover


def _stream(args: argparse.Namespace) -> None:
    import torch

    from client.training import train_dp
    from shared.cohort import cohort_schema
    from shared.config import ModelSettings
    from shared.models import build_generator
    from shared.streaming import encode_table

    torch.set_num_threads(1)
    schema = cohort_schema()
    family = build_generator(schema, ModelSettings())
    baseline = peak_rss_bytes()
    with tempfile.TemporaryDirectory(prefix="fedsynth-stream-") as tmp:
        t0 = time.perf_counter()
        rows = encode_table(args.path, schema, Path(tmp) / "rows.f32", chunk_rows=args.chunk_rows)
        encoded_s = time.perf_counter() - t0
        after_encode = peak_rss_bytes()
        stats = train_dp(
            family,
            rows,
            steps=args.steps,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            sample_rate=args.sample_rate,
            learning_rate=1e-2,
            device=torch.device("cpu"),
            seed=0,
        )
        print(
            json.dumps(
                {
                    "rows": int(rows.shape[0]),
                    "width": int(rows.shape[1]),
                    "encode_s": encoded_s,
                    "train_s": stats.seconds,
                    "steps": stats.steps,
                    "mean_batch": stats.mean_batch,
                    "rss_after_imports": baseline,
                    "rss_after_encode": after_encode,
                    "peak_rss": peak_rss_bytes(),
                }
            )
        )


def _whole(args: argparse.Namespace) -> None:
    from shared.cohort import cohort_schema
    from shared.config import ModelSettings
    from shared.models import build_generator
    from shared.tables import load_table

    schema = cohort_schema()
    family = build_generator(schema, ModelSettings())
    baseline = peak_rss_bytes()
    import torch

    data = torch.from_numpy(family.encode(load_table(args.path, schema)))
    print(
        json.dumps({"rows": len(data), "rss_after_imports": baseline, "peak_rss": peak_rss_bytes()})
    )


def main() -> None:
    """Child-process entry points used by ``perf.py``."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(required=True)
    s = sub.add_parser("stream", help="encode in chunks and train; print peak RSS")
    s.add_argument("path", type=Path)
    s.add_argument("--chunk-rows", type=int, default=100_000)
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--sample-rate", type=float, default=0.002)
    s.set_defaults(handler=_stream)
    w = sub.add_parser("whole", help="load the whole table with pandas (the old path)")
    w.add_argument("path", type=Path)
    w.set_defaults(handler=_whole)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
