"""The site's side of the registry's names: refuse messages meant for another name.

In a deployment the coordinator tells each node the name its key was registered under
(:data:`shared.keys.REGISTERED_AS`, added by :class:`server.identity.NamedGrid`), and
discards replies under any other name. This ClientApp mod checks that name against the
site's own ``--site-name`` before any handler runs, so a site started under a wrong name
refuses every message with the fix, instead of training, charging its ledger and having
its replies discarded. The record is removed before a handler sees the message. Without
the record (a simulation, or ``--insecure``) messages pass unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Error, Message

from client.settings import SiteSettings
from shared import keys
from shared.errors import FedsynthError
from shared.logs import setup_logging

log = logging.getLogger("fedsynth.client")
#: Flower error code of a message refused for a name that is not this site's.
ERROR_CODE = 4101
Handler = Callable[[Message, Context], Message]


def registered_name_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """Pass ``msg`` on without its name record, or refuse it if the name is not ours."""
    if not msg.has_content() or keys.REGISTERED_AS not in msg.content:
        return call_next(msg, context)
    record = msg.content.pop(keys.REGISTERED_AS)
    value = record.get(keys.SITE_NAME) if isinstance(record, ConfigRecord) else None
    registered = value if isinstance(value, str) else None
    try:
        declared = SiteSettings.from_context(context.node_config, context.run_config).site_name
    except FedsynthError:
        return call_next(msg, context)  # the handler reports the broken site settings
    if registered == declared:
        return call_next(msg, context)
    reason = (
        f"the coordinator registered this site's key as {registered!r}, but the site runs with "
        f"--site-name {declared!r}: it refuses every message, so nothing is computed or "
        f"charged. Restart it with --site-name {registered} (the name also locates the "
        f"privacy ledger: keep --state-dir), or ask the coordinator to register the key as "
        f"{declared!r}"
    )
    setup_logging()
    log.error("%s", reason)
    return Message(Error(code=ERROR_CODE, reason=reason), reply_to=msg)
