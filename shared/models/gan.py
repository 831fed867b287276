"""DP conditional tabular GAN in the CTGAN style (``"dp-ctgan"``).

Xu et al., "Modeling Tabular Data using Conditional GAN" (NeurIPS 2019):
a generator G(z, c) and a discriminator D(x, c), where the conditional vector
c picks one categorical column and one of its categories ("training by
sampling"), and G is also penalised (cross-entropy) when its row does not hold
the category c asks for. Categorical spans are produced with the Gumbel-softmax
(τ = 0.2) during training and drawn exactly from softmax(logits) when sampling;
each numeric value is a Gaussian whose mean and log-std G outputs (a
heteroscedastic head like the VAE's, so a value's spread need not come from
z alone: a per-row discriminator cannot see a batch's spread), drawn by
reparameterisation in training. Measured, the recipe still collapses (see the
README's figures); the family is kept as a plugin, not as a default.

Privacy design (after DPGAN, Xie et al. 2018, and DP-CTGAN / Torkzadehmahani
et al., CVPR-W 2019):

* **Only D sees real rows**, and D is trained by the site's ordinary DP-SGD
  step (:func:`client.training.train_dp`: Poisson sampling at the ledger's q,
  per-row clipping to C, Opacus Gaussian noise σC). Each DP-SGD batch is the
  Poisson batch of real rows plus a *fixed* number (the public setting
  ``gan_fakes``) of fake rows from G; fake rows depend on no real row, and their
  number not on the site's row count n, so adding or removing a row moves the
  clipped sum by at most C, and only when that row is sampled: the ledger charges
  exactly one sampled Gaussian step per D step. (A count of q·n would follow n,
  adding a clipped fake gradient to every step at some n.)
* **G is post-processing**: after each D step, G takes one Adam step on the
  non-saturating loss of the *current, already private* D on fresh fake rows
  (D's weights detached; no real row involved). Both D's and G's updates leave
  the site each round; G's carries no more information than the DP D.
* **Conditional vectors come from the public schema**: a column is chosen
  uniformly (or none, with probability ``gan_uncond_rate``), then a category
  uniformly over the schema's categories (the "missing" slot counts as one for
  a nullable column). Nothing is counted on the site's rows. CTGAN instead draws
  categories by their (log) frequency in the data, which would be an
  unaccounted release.
* **Real rows are never filtered by category** (that would break Poisson
  sampling at q). A real row's conditional vector uses the same public column
  choice, and its category is the row's own value in that column (the row's
  data, covered by DP-SGD like every other feature). Real and fake pairs then
  differ in the distribution of c, but for a fixed c the generator's optimum is
  still the real conditional p(x | c).
* No PacGAN packing (CTGAN's ``pac = 10``): a pack would mix several real rows
  in one per-row gradient.

Unconditional sampling (what the release uses) feeds G the empty conditional
vector, which it is trained on a share ``gan_uncond_rate`` of the time. Only
``nn.Linear`` layers, so fused per-row clipping applies; no BatchNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.config import ModelSettings
from shared.constrained import RowDistribution
from shared.models.base import GeneratorFamily, LocalLoop, register_family
from shared.models.gan_cond import CondSampler
from shared.schema import Schema
from shared.transforms import SpanInfo

#: Gumbel-softmax temperature of categorical outputs during training (CTGAN's value).
TAU = 0.2
#: Adam betas of the generator (CTGAN's values; D uses the site's DP-SGD optimiser).
G_BETAS = (0.5, 0.9)
#: Bounds of the generator's numeric log-std (scaled units), as in the VAE's heads.
LOGSTD_MIN, LOGSTD_MAX = -5.0, 1.0


class Discriminator(nn.Module):
    """D(x, c): one hidden layer (DP noise grows with D's size). The input's last column,
    the real/fake label, is ignored here and read by :class:`GANLoss`."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_dim, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.hidden(x[:, :-1]), 0.2)
        out: torch.Tensor = self.out(h).squeeze(1)
        return out

    def score_fixed(self, x: torch.Tensor) -> torch.Tensor:
        """D's logit with its weights held fixed (no grad to D, no Opacus/fused hooks)."""
        h = F.leaky_relu(F.linear(x, self.hidden.weight.detach(), self.hidden.bias.detach()), 0.2)
        return F.linear(h, self.out.weight.detach(), self.out.bias.detach()).squeeze(1)


class Generator(nn.Module):
    """G(z, c): two hidden ReLU layers; raw output: logits per one-hot span and a mean per
    numeric value (the encoded row's layout), then one log-std per numeric value."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(torch.cat([z, cond], dim=1))
        return out


class CTGANModule(nn.Module):
    """Holds both networks, so the whole GAN is one state dict (sent and averaged whole)."""

    def __init__(
        self, data_dim: int, n_numeric: int, cond_dim: int, noise: int, hidden: int
    ) -> None:
        super().__init__()
        self.data_dim, self.cond_dim, self.noise = data_dim, cond_dim, noise
        # data_dim logits / means, then one log-std per numeric value.
        self.generator = Generator(noise + cond_dim, hidden, data_dim + n_numeric)
        self.discriminator = Discriminator(data_dim + cond_dim, hidden)


class GANLoss(nn.Module):
    """Per-row discriminator loss: BCE with logits against the label in the input's last column.

    ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"`` (one loss per row), as
    Opacus's ghost clipping and the fused clipper ask of a criterion.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(output, target[:, -1], reduction="none")
        if self.reduction == "none":
            return loss
        return loss.sum() if self.reduction == "sum" else loss.mean()


def activate(spans: tuple[SpanInfo, ...], raw: torch.Tensor, data_dim: int) -> torch.Tensor:
    """G's training output: Gumbel-softmax (τ = 0.2) per one-hot span, and per numeric
    value a reparameterised Gaussian draw ``mean + exp(log_std) · ε``.

    A value with public atoms is multiplied by its (relaxed) ``continuous`` mode slot:
    a real row at an atom holds the code 0 there, so D cannot tell fake rows apart by a
    value that the mode makes irrelevant.
    """
    parts: list[torch.Tensor] = []
    j = 0
    value_part: dict[str, int] = {}
    for span in spans:
        block = raw[:, span.start : span.stop]
        if span.kind == "numeric":
            ls = raw[:, data_dim + j : data_dim + j + 1].clamp(LOGSTD_MIN, LOGSTD_MAX)
            value_part[span.column] = len(parts)
            parts.append(block + torch.exp(ls) * torch.randn_like(block))
            j += 1
        else:
            mode = F.gumbel_softmax(block, tau=TAU, hard=False, dim=1)
            if span.kind == "atoms":
                k = value_part[span.column]
                parts[k] = parts[k] * mode[:, :1]
            parts.append(mode)
    return torch.cat(parts, dim=1)


class AdversarialLoop(LocalLoop):
    """Fake rows in every D batch, and one post-processing G step after every D step."""

    def __init__(self, family: DPCTGAN, *, learning_rate: float) -> None:
        self.family = family
        self.gan = family.gan()
        self.device = next(self.gan.discriminator.parameters()).device
        self.gan.generator.to(self.device).train()
        self.fakes = family.settings.gan_fakes  # public and fixed: see the module docstring
        self.optimizer = torch.optim.Adam(
            self.gan.generator.parameters(), lr=learning_rate, betas=G_BETAS
        )

    def _fake(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cond, col, cat = self.family.cond.fake(n, self.device)
        z = torch.randn(n, self.gan.noise, device=self.device)
        raw = self.gan.generator(z, cond)
        out = activate(self.family.transformer.spans, raw, self.gan.data_dim)
        return out, raw, cond, torch.stack([col, cat])

    def private_batch(self, real: torch.Tensor) -> torch.Tensor:
        real_in = torch.cat(
            [real, self.family.cond.real(real), torch.ones(real.shape[0], 1, device=real.device)],
            dim=1,
        )
        with torch.no_grad():
            fake, _, cond, _ = self._fake(self.fakes)
        fake_in = torch.cat([fake, cond, torch.zeros(self.fakes, 1, device=self.device)], dim=1)
        return torch.cat([real_in, fake_in], dim=0)

    def after_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        fake, raw, cond, col_cat = self._fake(self.fakes)
        score = self.gan.discriminator.score_fixed(torch.cat([fake, cond], dim=1))
        loss: torch.Tensor = F.softplus(-score).mean()  # non-saturating generator loss
        col, cat = col_cat[0], col_cat[1]
        for c, span in enumerate(self.family.cond.spans):
            rows = torch.nonzero(col == c).squeeze(1)
            if rows.numel():  # CTGAN's conditional loss: produce the asked category
                logits = raw[rows, span.start : span.stop]
                loss = loss + F.cross_entropy(logits, cat[rows], reduction="sum") / self.fakes
        params = list(self.gan.generator.parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
            p.grad = g  # only G's gradients: D's weights are fixed here
        self.optimizer.step()


@register_family("dp-ctgan")
class DPCTGAN(GeneratorFamily):
    """Conditional GAN; only the discriminator is trained on real rows (with DP-SGD)."""

    def __init__(self, schema: Schema, settings: ModelSettings) -> None:
        self.cond = CondSampler(schema, uncond_rate=settings.gan_uncond_rate)
        super().__init__(schema, settings)

    def gan(self) -> CTGANModule:
        """The module, typed."""
        if not isinstance(self.module, CTGANModule):  # pragma: no cover - build_module
            raise TypeError("module is not a CTGANModule")
        return self.module

    def build_module(self) -> nn.Module:
        n_numeric = sum(1 for s in self.transformer.spans if s.kind == "numeric")
        return CTGANModule(
            self.transformer.width,
            n_numeric,
            self.cond.width,
            self.settings.gan_noise,
            self.settings.hidden,
        )

    def private_module(self) -> nn.Module:
        return self.gan().discriminator

    def criterion(self) -> nn.Module:
        return GANLoss()

    def local_loop(self, *, learning_rate: float) -> LocalLoop:
        return AdversarialLoop(self, learning_rate=learning_rate)

    def _raw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        gan = self.gan()
        device = next(gan.parameters()).device
        z = torch.randn(n, gan.noise, generator=generator, device=device)
        out: torch.Tensor = gan.generator(z, torch.zeros(n, gan.cond_dim, device=device))
        return out  # the empty condition: unconditional rows

    def sample_encoded(self, n: int, generator: torch.Generator) -> torch.Tensor:
        dist = self._distribution(n, generator)
        out = torch.zeros(dist.shape[0], self.transformer.width)
        for span in self.transformer.spans:
            if span.kind == "numeric":
                noise = torch.randn(n, generator=generator, device=dist.device).cpu()
                value = dist[:, span.start, 0] + dist[:, span.start, 1] * noise
                out[:, span.start] = value.clamp(-1.0, 1.0).float()
            else:
                probs = dist[:, span.start : span.stop, 0]
                idx = torch.multinomial(probs.float(), 1, generator=generator)
                out[:, span.start : span.stop].scatter_(1, idx, 1.0)
        return out

    def _distribution(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, width, 2)``: (probability, 0) per one-hot slot, (mean, std) per value (CPU)."""
        raw = self._raw(n, generator).double().cpu()
        d = self.transformer.width
        dist = torch.zeros(n, d, 2, dtype=torch.float64)
        j = 0
        for span in self.transformer.spans:
            block = raw[:, span.start : span.stop]
            if span.kind == "numeric":
                dist[:, span.start, 0] = block[:, 0].clamp(-1.0, 1.0)
                dist[:, span.start, 1] = torch.exp(raw[:, d + j].clamp(LOGSTD_MIN, LOGSTD_MAX))
                j += 1
            else:
                dist[:, span.start : span.stop, 0] = torch.softmax(block, dim=1)
        return dist

    def sample_distribution(self, n: int, generator: torch.Generator) -> RowDistribution:
        """Given z, columns are independent: one-hot spans are draws from softmax(logits)
        (what the Gumbel-softmax relaxes in training), numeric values Gaussian."""
        dist = self._distribution(n, generator)
        return RowDistribution(dist[:, :, 0].numpy(), dist[:, :, 1].float().numpy())
