"""Site names bound to the coordinator's registry, not taken on a site's word.

With SuperNode authentication the SuperLink gives each registered public key its node
id when ``fedsynth server`` registers it (``flwr supernode register``), and accepts
messages from that node id only when they are signed with that key. So the node id a
reply comes from names the key, and the registry names the site that owns the key.
``fedsynth server`` keeps that map, node id → registered name, in a JSON file (run-config
key ``site-nodes``) and rewrites it when the registry changes during a run
(:class:`server.deploy.RegistryFollower`).

:class:`NamedGrid` tells each site, in every message, the name its key was registered
under; a site running under another ``--site-name`` refuses the message before computing
or charging anything (:mod:`client.identity`). And every parser of a site's reply passes
the name the site declares (which also names its ledger) through :func:`registered_name`:
a reply whose node id is not registered, or that declares another site's name, is
discarded (:class:`ProtocolError`). So the privacy report, the checkpoints and the
release name only registered sites, each under the key that vouches for it. In a simulation, or
with ``--insecure`` (no node authentication), there is no map and the declared names
are used as given.

The map is process state: one ServerApp process runs one federation, and
:func:`server.app.run_federation` sets it (or clears it) first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from server.errors import DeploymentError, ProtocolError
from shared import keys
from shared.manifest import atomic_write_bytes

#: The map's file name in the coordinator's runtime folder.
NODES_FILE = "site-nodes.json"

log = logging.getLogger("fedsynth.server")
_nodes_file: Path | None = None


def bind_names(path: str | Path | None) -> None:
    """Check replies against the map at ``path`` from now on; ``None`` or ``""``: do not."""
    global _nodes_file
    _nodes_file = Path(path) if path else None
    if _nodes_file is not None:
        log.info("site names are checked against the registry (node map %s)", _nodes_file)


def write_site_nodes(path: Path, nodes: dict[str, int]) -> None:
    """Write the node id → registered name map of ``nodes`` (name → node id), atomically."""
    doc = {str(node): name for name, node in sorted(nodes.items())}
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode())


def _site_nodes() -> dict[str, Any]:
    """The map (node id as text → name); raises :class:`DeploymentError` if unreadable."""
    try:
        nodes = json.loads(Path(str(_nodes_file)).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DeploymentError(
            f"cannot read the site registry's node map {_nodes_file} ({exc}); restart "
            "`fedsynth server` with the same --out to resume"
        ) from None
    return nodes if isinstance(nodes, dict) else {}


def node_label(node: int) -> str:
    """``node`` for a log line: with the site name its key is registered under, if any."""
    if _nodes_file is None:
        return f"node {node}"
    try:
        name = _site_nodes().get(str(node))
    except DeploymentError:
        name = None
    if isinstance(name, str):
        return f"site {name} (node {node})"
    return f"node {node} (not in the site registry now)"


def registered_name(node: int, declared: str) -> str:
    """The site name for a reply from ``node`` that declares ``declared``.

    Raises
    ------
    ProtocolError
        The node is not registered, or is registered under another name: the reply
        is discarded.
    DeploymentError
        The map cannot be read (the coordinator's runtime folder was damaged).
    """
    if _nodes_file is None:
        return declared
    registered = _site_nodes().get(str(node))
    if not isinstance(registered, str):
        raise ProtocolError(f"node {node} is not a registered site (declared {declared!r})")
    if registered != declared:
        raise ProtocolError(
            f"node {node} holds the key registered for site {registered!r} but its reply "
            f"names {declared!r}: discarded. That site must run `fedsynth client` with "
            f"--site-name {registered} (the name its key was registered under; it also "
            "names its privacy ledger)"
        )
    return registered


class NamedGrid(Grid):
    """The run's grid, telling each site the name its key was registered under.

    Every message to a registered node carries :data:`shared.keys.REGISTERED_AS`, so
    a site started under another ``--site-name`` refuses it before computing anything
    (:mod:`client.identity`), rather than spending budget on replies the server would
    discard. Everything else is delegated to ``grid`` unchanged.
    """

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def _named(self, messages: Iterable[Message]) -> list[Message]:
        nodes = _site_nodes() if _nodes_file is not None else {}
        out = []
        for msg in messages:
            meta = msg.metadata
            name = nodes.get(str(meta.dst_node_id))
            if not isinstance(name, str):
                out.append(msg)  # not registered: the SuperLink never delivers it
                continue
            # A fresh record set: strategies may share one content object between nodes.
            content = RecordDict(dict(msg.content.items()))
            content[keys.REGISTERED_AS] = ConfigRecord({keys.SITE_NAME: name})
            out.append(
                Message(
                    content=content,
                    dst_node_id=meta.dst_node_id,
                    message_type=meta.message_type,
                    ttl=meta.ttl,
                    group_id=meta.group_id,
                )
            )
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send with each site's registered name; see :meth:`flwr.serverapp.Grid.send_and_receive`."""
        return self.grid.send_and_receive(self._named(messages), timeout=timeout)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push with each site's registered name."""
        return self.grid.push_messages(self._named(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegated."""
        return self.grid.pull_messages(message_ids)

    def get_node_ids(self) -> Iterable[int]:
        """Delegated."""
        return self.grid.get_node_ids()

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        """Delegated."""
        return self.grid.create_message(*args, **kwargs)

    def set_run(self, run: Any) -> None:
        """Delegated."""
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        """Delegated."""
        return self.grid.run
