"""A site's secret randomness for DP-SGD: independent streams with their full entropy.

Two properties the privacy guarantee needs, which seeding torch generators with one
integer does not give:

* **Secrecy.** A coordinator that could regenerate a site's Gaussian noise would
  subtract it and see the clipped gradients. PyTorch's CPU generator (MT19937) keeps
  only the low 32 bits of ``manual_seed``, so a 63-bit secret seed left a 2³² search.
  Here a secret of :data:`SEED_BITS` bits is expanded by NumPy's ``SeedSequence`` into
  the whole 624-word MT19937 state. A CUDA generator (Philox) takes a 64-bit seed.
* **Independence.** The subsampled Gaussian accountant assumes a row's inclusion is
  independent of everything else in the step. Seeding the sampler and the model's own
  randomness (``torch.manual_seed``, e.g. the VAE's reparameterisation draws) with the
  same integer made the two streams identical, so the noise inside other rows'
  gradients depended on whether a row was sampled. Each stream here is its own
  ``SeedSequence`` child.

MT19937 and Philox are not cryptographically secure generators; their state is
secret and never observed directly (only through noised sums). Opacus's ``secure_mode``
(``torchcsprng``) replaces both sampling and noise where that package is installed.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from dataclasses import dataclass

import numpy as np
import torch

from client.errors import TrainingError

#: Bits of a site's secret seed (drawn from the operating system at a real site).
SEED_BITS = 128

# torch's serialised CPU generator state (CPUGeneratorImplState): the initial seed
# (u64), left (i32), seeded (i32), next (u64), the 624 MT19937 words (each in a u64),
# three doubles, an i32 flag, then a float and a bool (padded). Checked below, so a
# torch build with another layout fails closed instead of training with a weak state.
_MT_WORDS = 624
_STATE_OFFSET = 24
_STATE_BYTES = 5056


def secret_seed() -> int:
    """A fresh :data:`SEED_BITS`-bit seed from the operating system's CSPRNG."""
    return secrets.randbits(SEED_BITS)


def site_seed(simulation_seed: int | None, *parts: object) -> int:
    """A site's seed: :func:`secret_seed` at a real site, else derived from the run seed.

    In a simulation the seed is the first :data:`SEED_BITS` bits of
    SHA-256(``"simulation_seed:part:part…"``), so research runs reproduce and the
    parts (site name, round or step) keep every site's and round's noise apart.
    """
    if simulation_seed is None:
        return secret_seed()
    text = ":".join(str(p) for p in (simulation_seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[: SEED_BITS // 8], "big")


def _cpu_generator(seq: np.random.SeedSequence) -> torch.Generator:
    gen = torch.Generator()
    raw = bytearray(gen.get_state().numpy().tobytes())
    if len(raw) != _STATE_BYTES:
        raise TrainingError(
            f"this torch build's CPU generator state has {len(raw)} bytes, not "
            f"{_STATE_BYTES}: fedsynth cannot give its noise a full-entropy secret state. "
            "Install the pinned torch (see pyproject.toml) or train with --secure-mode"
        )
    words = seq.generate_state(_MT_WORDS, dtype=np.uint32).astype("<u8")
    struct.pack_into("<QiiQ", raw, 0, 0, 1, 1, 0)  # left = 1: regenerate from the words
    raw[_STATE_OFFSET : _STATE_OFFSET + 8 * _MT_WORDS] = words.tobytes()
    tail = _STATE_OFFSET + 8 * _MT_WORDS
    raw[tail:] = bytes(len(raw) - tail)  # no cached normal sample
    state = torch.frombuffer(raw, dtype=torch.uint8).clone()
    gen.set_state(state)
    if not torch.equal(gen.get_state(), state):
        raise TrainingError(
            "torch did not accept the generator state fedsynth set; install the pinned "
            "torch (see pyproject.toml) or train with --secure-mode"
        )
    return gen


def _u64(seq: np.random.SeedSequence) -> int:
    return int(seq.generate_state(1, dtype=np.uint64)[0])


@dataclass(frozen=True)
class RoundRandomness:
    """The independent streams of one site's round (or distributed step).

    Attributes
    ----------
    sampling : torch.Generator
        CPU generator for the Poisson sampling uniforms.
    noise : torch.Generator
        Generator on the training device for the Gaussian noise.
    model_seed : int
        Seed for ``torch.manual_seed``: the model's own randomness, independent of the
        sampling and the noise.
    shares : numpy.random.Generator
        For noise drawn with NumPy (distributed DP noise shares).
    """

    sampling: torch.Generator
    noise: torch.Generator
    model_seed: int
    shares: np.random.Generator

    @classmethod
    def from_seed(cls, seed: int, device: torch.device) -> RoundRandomness:
        """Split ``seed`` (an integer of up to :data:`SEED_BITS` bits) into the streams."""
        if seed < 0:
            raise TrainingError(f"a noise seed must be non-negative, got {seed}")
        sampling, noise, model, shares = np.random.SeedSequence(seed).spawn(4)
        if device.type == "cpu":
            noise_gen = _cpu_generator(noise)
        else:
            noise_gen = torch.Generator(device=device)
            noise_gen.manual_seed(_u64(noise))
        return cls(
            sampling=_cpu_generator(sampling),
            noise=noise_gen,
            model_seed=_u64(model),
            shares=np.random.Generator(np.random.PCG64DXSM(shares)),
        )
