"""Site names bound to the coordinator's registry, not taken on a site's word.

With SuperNode authentication the SuperLink gives each registered public key its node
id when ``fedsynth server`` registers it (``flwr supernode register``), and accepts
messages from that node id only when they are signed with that key. So the node id a
reply comes from names the key, and the registry names the site that owns the key.
``fedsynth server`` keeps that map, node id → registered name, in a JSON file (run-config
key ``site-nodes``) and rewrites it when the registry changes during a run
(:class:`server.deploy.RegistryFollower`).

Every parser of a site's reply passes the name the site declares (its ``--site-name``,
which also names its ledger) through :func:`registered_name`. A reply whose node id is
not registered, or that declares another site's name, is discarded
(:class:`ProtocolError`), so the privacy report, the checkpoints and the release
name only registered sites, each under the key that vouches for it. In a simulation, or
with ``--insecure`` (no node authentication), there is no map and the declared names
are used as given.

The map is process state: one ServerApp process runs one federation, and
:func:`server.app.run_federation` sets it (or clears it) first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from server.errors import DeploymentError, ProtocolError
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
    try:
        nodes = json.loads(_nodes_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DeploymentError(
            f"cannot read the site registry's node map {_nodes_file} ({exc}); restart "
            "`fedsynth server` with the same --out to resume"
        ) from None
    registered = nodes.get(str(node)) if isinstance(nodes, dict) else None
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
