"""Secure aggregation: the server learns only the sum of the sites' vectors.

Pure protocol maths, independent of Flower (see :mod:`shared.secagg.protocol`
for the protocol and its reference). ``client.secagg`` and ``server.secagg``
carry its four stages over Flower messages.
"""

from shared.secagg.encoding import FixedPointCodec
from shared.secagg.errors import (
    QuantisationOverflowError,
    SecAggAbortedError,
    SecAggError,
    SecAggProtocolError,
    SetupRefusedError,
)
from shared.secagg.protocol import (
    PublicKeys,
    ServerRound,
    SiteSecrets,
    UnmaskShares,
    required_threshold,
    site_mask,
    site_setup,
    site_share_keys,
    site_unmask,
)

__all__ = [
    "FixedPointCodec",
    "PublicKeys",
    "QuantisationOverflowError",
    "SecAggAbortedError",
    "SecAggError",
    "SecAggProtocolError",
    "ServerRound",
    "SetupRefusedError",
    "SiteSecrets",
    "UnmaskShares",
    "required_threshold",
    "site_mask",
    "site_setup",
    "site_share_keys",
    "site_unmask",
]
