"""Secure aggregation of float vectors (Bonawitz et al., "Practical Secure Aggregation
for Privacy-Preserving Machine Learning", CCS 2017), semi-honest variant, without Flower.

Four stages per round; sites are numbered ``1..N`` (their Shamir x-coordinates):

1. **advertise** (:func:`site_setup`): each site draws two X25519 key pairs, ``c``
   (to encrypt shares) and ``s`` (to agree pairwise masks), and a self-mask seed
   ``b``; it sends the two public keys. The server publishes the roster ``U1``.
2. **share keys** (:func:`site_share_keys`): each site Shamir-shares ``b`` and its
   ``s`` private key, ``t`` of ``|U1|``, and encrypts each peer's pair of shares
   under the key it agrees with that peer (AES-GCM), so the server relays
   ciphertexts it cannot read. Senders form ``U2``.
3. **masked input** (:func:`site_mask`): the site encodes its vector
   (:class:`~shared.secagg.encoding.FixedPointCodec`) and adds ``PRG(b)`` plus, for
   every peer ``j`` in ``U2``, ``±PRG(s_ij)`` (``+`` if ``i < j``): pairwise masks
   cancel in the sum. Senders form ``U3``.
4. **unmask** (:func:`site_unmask`): each survivor reveals, for every peer, *either*
   its share of ``b_j`` (``j`` in ``U3``) *or* its share of ``s_j`` (``j`` dropped
   after stage 2), never both. With ``t`` responses the server removes the self
   masks and the dropped sites' pairwise masks (:meth:`ServerRound.unmask`).

Every stage with fewer than ``t`` sites raises :class:`SecAggAbortedError`; the
server then has only masked vectors, uniformly random to it. The server learns
the sum of the survivors' encoded vectors and nothing else, provided fewer than
``t`` parties collude with it (then nobody can rebuild a survivor's self mask).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared.secagg.crypto import (
    agree,
    combine_shares,
    decrypt,
    encrypt,
    new_private_key,
    prg,
    public_key,
    split_secret,
)
from shared.secagg.encoding import FixedPointCodec, IntVector
from shared.secagg.errors import SecAggAbortedError, SecAggProtocolError

_SHARE = 66


@dataclass(frozen=True)
class PublicKeys:
    """What a site advertises: its encryption and masking public keys (32 bytes each)."""

    c_pk: bytes
    s_pk: bytes


@dataclass(frozen=True)
class SiteSecrets:
    """A site's secrets for one round. They never leave the site."""

    index: int
    c_sk: bytes
    s_sk: bytes
    seed: bytes

    @property
    def public(self) -> PublicKeys:
        """The keys this site advertises."""
        return PublicKeys(public_key(self.c_sk), public_key(self.s_sk))


def required_threshold(n_sites: int, threshold: int = 0) -> int:
    """The threshold ``t`` for ``n_sites``: ``threshold`` if set, else a strict majority.

    Never below 2: a "sum" of one site is that site's update.

    Raises
    ------
    SecAggAbortedError
        If ``n_sites`` is below the threshold (the round cannot be secure).
    """
    t = threshold if threshold > 0 else max(2, n_sites // 2 + 1)
    if t < 2 or n_sites < t:
        raise SecAggAbortedError(
            f"secure aggregation needs at least {max(t, 2)} sites and only {n_sites} are "
            "connected; start more sites or lower the threshold (never below 2)"
        )
    return t


def site_setup(index: int) -> SiteSecrets:
    """Stage 1 at a site: fresh keys and self-mask seed for this round."""
    if index < 1:
        raise ValueError(f"site index must be >= 1, got {index}")
    return SiteSecrets(index, new_private_key(), new_private_key(), new_private_key())


def _check_roster(roster: dict[int, PublicKeys], threshold: int, stage: str) -> None:
    if len(roster) < threshold:
        raise SecAggAbortedError(
            f"{stage}: only {len(roster)} site(s) left, fewer than the threshold {threshold}; "
            "the round is aborted and nothing is revealed"
        )


def _aad(context: bytes, sender: int, recipient: int) -> bytes:
    return context + f"|{sender}->{recipient}".encode()


def site_share_keys(
    me: SiteSecrets, roster: dict[int, PublicKeys], *, threshold: int, context: bytes
) -> dict[int, bytes]:
    """Stage 2 at a site: encrypted shares of ``b`` and ``s_sk``, one ciphertext per peer."""
    _check_roster(roster, threshold, "share keys")
    if roster.get(me.index) != me.public:
        raise SecAggProtocolError("the roster does not hold this site's own public keys")
    holders = sorted(roster)
    b_shares = split_secret(me.seed, threshold=threshold, holders=holders)
    sk_shares = split_secret(me.s_sk, threshold=threshold, holders=holders)
    out: dict[int, bytes] = {}
    for j in holders:
        key = agree(me.c_sk, roster[j].c_pk, purpose=b"share-encryption|" + context)
        out[j] = encrypt(key, b_shares[j] + sk_shares[j], context=_aad(context, me.index, j))
    return out


def _pair_seed(s_sk: bytes, peer_s_pk: bytes, context: bytes) -> bytes:
    return agree(s_sk, peer_s_pk, purpose=b"pairwise-mask|" + context)


def site_mask(
    me: SiteSecrets,
    encoded: IntVector,
    peers: dict[int, PublicKeys],
    *,
    codec: FixedPointCodec,
    context: bytes,
) -> IntVector:
    """Stage 3 at a site: ``encoded + PRG(b) + Σ_j ±PRG(s_ij)`` mod ``2**k`` (``peers`` = ``U2``)."""
    if me.index not in peers:
        raise SecAggProtocolError("this site is not among the sites whose shares were relayed")
    k, n = codec.modulus_bits, len(encoded)
    masked = codec.add(encoded, prg(me.seed, n, modulus_bits=k))
    for j, keys in peers.items():
        if j == me.index:
            continue
        mask = prg(_pair_seed(me.s_sk, keys.s_pk, context), n, modulus_bits=k)
        masked = codec.add(masked, mask) if me.index < j else codec.sub(masked, mask)
    return masked


@dataclass(frozen=True)
class UnmaskShares:
    """A survivor's stage-4 answer: shares of survivors' seeds, of dropped sites' keys."""

    seed_shares: dict[int, bytes] = field(default_factory=dict)
    key_shares: dict[int, bytes] = field(default_factory=dict)


def site_unmask(
    me: SiteSecrets,
    roster: dict[int, PublicKeys],
    inbox: dict[int, bytes],
    *,
    survivors: set[int],
    dropped: set[int],
    threshold: int,
    context: bytes,
) -> UnmaskShares:
    """Stage 4 at a site: decrypt the shares it holds and reveal one kind per peer.

    Raises
    ------
    SecAggProtocolError
        If a peer is listed both as survivor and as dropped (revealing both
        shares would unmask that peer's input), or a share fails authentication.
    SecAggAbortedError
        If fewer than ``threshold`` survivors are listed.
    """
    if survivors & dropped:
        raise SecAggProtocolError(
            f"sites {sorted(survivors & dropped)} are listed as both survivor and dropped; "
            "refusing to reveal both of their secrets"
        )
    if len(survivors) < threshold:
        raise SecAggAbortedError(
            f"unmask: only {len(survivors)} survivor(s), fewer than the threshold {threshold}"
        )
    out = UnmaskShares()
    for j in sorted(survivors | dropped):
        if j not in inbox or j not in roster:
            raise SecAggProtocolError(f"no share was received from site {j}")
        key = agree(me.c_sk, roster[j].c_pk, purpose=b"share-encryption|" + context)
        plain = decrypt(key, inbox[j], context=_aad(context, j, me.index))
        if j in survivors:
            out.seed_shares[j] = plain[:_SHARE]
        else:
            out.key_shares[j] = plain[_SHARE:]
    return out


class ServerRound:
    """The server's side of one round: relays, tracks ``U1..U3``, and unmasks the sum.

    Parameters
    ----------
    threshold : int
        ``t``: sites needed at every stage (and colluders tolerated: fewer than ``t``).
    codec : FixedPointCodec
        The encoding all sites use this round.
    context : bytes
        Identifies the run and round; binds every key and ciphertext to it.
    """

    def __init__(self, *, threshold: int, codec: FixedPointCodec, context: bytes) -> None:
        self.threshold = threshold
        self.codec = codec
        self.context = context
        self.roster: dict[int, PublicKeys] = {}
        self.inboxes: dict[int, dict[int, bytes]] = {}
        self.masked: dict[int, IntVector] = {}

    def register_keys(self, adverts: dict[int, PublicKeys]) -> dict[int, PublicKeys]:
        """Stage 1: the roster ``U1`` to publish (raises below the threshold)."""
        _check_roster(adverts, self.threshold, "advertise keys")
        self.roster = dict(adverts)
        return self.roster

    def route_shares(self, sent: dict[int, dict[int, bytes]]) -> dict[int, dict[int, bytes]]:
        """Stage 2: ciphertexts regrouped per recipient (``inbox[recipient][sender]``)."""
        senders = {i: c for i, c in sent.items() if i in self.roster and set(c) == set(self.roster)}
        _check_roster({i: self.roster[i] for i in senders}, self.threshold, "share keys")
        self.inboxes = {j: {i: senders[i][j] for i in senders} for j in senders}
        return self.inboxes

    @property
    def share_senders(self) -> dict[int, PublicKeys]:
        """``U2``: the sites whose shares were relayed (the peers each site masks with)."""
        return {i: self.roster[i] for i in self.inboxes}

    def collect_masked(self, masked: dict[int, IntVector]) -> set[int]:
        """Stage 3: keep the masked vectors of ``U2`` members; returns ``U3``."""
        valid = {i: v for i, v in masked.items() if i in self.inboxes}
        sizes = {len(v) for v in valid.values()}
        if len(sizes) > 1:
            raise SecAggProtocolError(f"masked vectors of different lengths {sorted(sizes)}")
        _check_roster({i: self.roster[i] for i in valid}, self.threshold, "masked input")
        self.masked = valid
        return set(valid)

    def unmask(self, responses: dict[int, UnmaskShares]) -> IntVector:
        """Stage 4: the sum of the survivors' encoded vectors, modulo ``2**k``.

        Raises
        ------
        SecAggAbortedError
            If fewer than ``t`` survivors answered: no secret can be rebuilt.
        """
        answered = {i: r for i, r in responses.items() if i in self.masked}
        _check_roster({i: self.roster[i] for i in answered}, self.threshold, "unmask")
        survivors, dropped = set(self.masked), set(self.inboxes) - set(self.masked)
        k = self.codec.modulus_bits
        n = len(next(iter(self.masked.values())))
        total = np.zeros(n, dtype=np.uint64)
        for v in self.masked.values():
            total = self.codec.add(total, v)
        for i in survivors:
            shares = {r: a.seed_shares[i] for r, a in answered.items() if i in a.seed_shares}
            seed = combine_shares(shares, threshold=self.threshold)
            total = self.codec.sub(total, prg(seed, n, modulus_bits=k))
        for j in dropped:
            shares = {r: a.key_shares[j] for r, a in answered.items() if j in a.key_shares}
            s_sk = combine_shares(shares, threshold=self.threshold)
            for i in survivors:
                mask = prg(_pair_seed(s_sk, self.roster[i].s_pk, self.context), n, modulus_bits=k)
                # Survivor i added +mask when i < j and -mask otherwise: undo that.
                total = self.codec.sub(total, mask) if i < j else self.codec.add(total, mask)
        return total
