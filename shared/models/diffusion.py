"""DP tabular diffusion model in the TabDDPM style (``"dp-diffusion"``).

Kotelnikov et al., "TabDDPM: Modelling Tabular Data with Diffusion Models"
(ICML 2023): Gaussian diffusion (Ho et al., NeurIPS 2020) on the scaled numeric
values and multinomial diffusion (Hoogeboom et al., NeurIPS 2021) on each one-hot
span (categorical columns, missing indicators and atoms modes), with one MLP denoiser that
sees the whole noised row and the timestep.

* Noise schedule: cosine ᾱ_t (Nichol & Dhariwal, ICML 2021), shared by both
  processes, with a modest T (``ModelSettings.diffusion_steps``) so that sampling
  stays cheap on a CPU.
* Denoiser: input ``[x_t | sin/cos embedding of t]`` → two hidden ``nn.Linear``
  layers (SiLU) → one output per encoded column: the predicted noise ε̂ on numeric
  values, logits of the predicted x̂₀ on one-hot spans. The timestep embedding is
  a fixed buffer, so every trainable layer is ``nn.Linear`` (fused clipping applies)
  and each runs once per forward pass.
* Loss per row: mean squared error of ε̂ over the numeric values (masked where
  the value is missing; not at an atom, whose slot holds the code 0) plus the
  multinomial KL(q(x_{t-1} | x_t, x₀) ‖ p(x_{t-1} | x_t)),
  weighted by T as in the ELBO estimate, averaged over the spans. At t = 1 the KL
  is the cross-entropy of x₀ itself. The timestep and noise are drawn per row
  inside ``forward``, so each row's loss depends on that row only (what DP-SGD's
  per-row clipping needs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from shared.constrained import RowDistribution
from shared.models.base import GeneratorFamily, register_family
from shared.transforms import SpanInfo

_TIME_DIM = 16  # width of the fixed sinusoidal timestep embedding
_TINY = 1e-12  # keeps log() finite on probabilities that are exactly 0


def cosine_alpha_bar(steps: int) -> torch.Tensor:
    """ᾱ_t for t = 0..T of the cosine schedule (ᾱ_0 = 1), float64.

    Each β_t = 1 − ᾱ_t / ᾱ_{t−1} is capped at 0.999 (Nichol & Dhariwal 2021).
    """
    s = 0.008
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alpha = (f[1:] / f[:-1]).clamp(min=1e-3)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(alpha, 0)])


def _time_table(steps: int) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017) of t = 0..T, shape ``(T + 1, _TIME_DIM)``."""
    half = _TIME_DIM // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float64) / half)
    args = torch.arange(steps + 1, dtype=torch.float64)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1).float()


class SpanIndex(nn.Module):
    """Positions of the one-hot spans, padded to one width, for vectorised span maths."""

    pos: torch.Tensor  # (spans, wmax) column of each slot; padding repeats the last one
    valid: torch.Tensor  # (spans, wmax) bool, False on padding
    k: torch.Tensor  # (spans, 1) number of categories K of each span
    numeric: torch.Tensor  # (width,) bool, True on numeric values

    def __init__(self, spans: tuple[SpanInfo, ...], width: int) -> None:
        super().__init__()
        onehot = [s for s in spans if s.kind != "numeric"]
        wmax = max((s.width for s in onehot), default=1)
        pos = [[s.start + min(k, s.width - 1) for k in range(wmax)] for s in onehot]
        valid = [[k < s.width for k in range(wmax)] for s in onehot]
        numeric = torch.zeros(width, dtype=torch.bool)
        for s in spans:
            if s.kind == "numeric":
                numeric[s.start] = True
        self.n_spans = len(onehot)
        self.register_buffer("pos", torch.tensor(pos, dtype=torch.long).reshape(-1, wmax), False)
        self.register_buffer("valid", torch.tensor(valid).reshape(-1, wmax), False)
        k = torch.tensor([float(s.width) for s in onehot]).reshape(-1, 1)
        self.register_buffer("k", k, False)
        self.register_buffer("numeric", numeric, False)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, width)`` → ``(n, spans, wmax)``; padding slots are zeroed."""
        return x[:, self.pos] * self.valid

    def draw(self, probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One-hot draws ``(n, width)`` from padded span probabilities (Gumbel-max)."""
        u = torch.rand(probs.shape, generator=generator, device=probs.device)
        scores = torch.log(probs + _TINY) - torch.log(-torch.log(u.clamp(min=1e-30)))
        choice = self.pos[:, 0] + scores.masked_fill(~self.valid, -math.inf).argmax(2)
        out = torch.zeros(probs.shape[0], self.numeric.shape[0], device=probs.device)
        # Out of place: the distributed step vmaps this over rows, and an in-place
        # scatter into an unbatched tensor cannot take batched indices.
        return out.scatter(1, choice, 1.0)


class TabularDenoiser(nn.Module):
    """Noising process plus MLP denoiser.

    ``forward(x0)`` draws, per row, a timestep t and the noise, and returns
    ``[denoiser output | ε | x_t | t]`` (width ``3·d + 1``), all the per-row
    criterion needs.
    """

    alpha_bar: torch.Tensor  # ᾱ_t, t = 0..T
    alpha: torch.Tensor  # α_t = ᾱ_t / ᾱ_{t-1} (α_0 = 1)
    time_table: torch.Tensor  # (T + 1, _TIME_DIM)
    index: SpanIndex

    def __init__(self, spans: tuple[SpanInfo, ...], width: int, hidden: int, steps: int) -> None:
        super().__init__()
        self.width, self.steps = width, steps
        self.index = SpanIndex(spans, width)
        ab = cosine_alpha_bar(steps)
        self.register_buffer("alpha_bar", ab.float(), False)
        self.register_buffer("alpha", torch.cat([ab[:1], ab[1:] / ab[:-1]]).float(), False)
        self.register_buffer("time_table", _time_table(steps), False)
        self.inp = nn.Linear(width + _TIME_DIM, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, width)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂ on numeric values and x̂₀ logits on one-hot spans, for noised rows at steps t."""
        h = F.silu(self.inp(torch.cat([x_t, self.time_table[t]], dim=1)))
        out: torch.Tensor = self.out(F.silu(self.mid(h)))
        return out

    def noised(
        self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw x_t ~ q(x_t | x₀); returns ``(x_t, ε)`` (ε is 0 off the numeric values)."""
        num = self.index.numeric
        ab = self.alpha_bar[t].unsqueeze(1)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device) * num
        x_num = (ab.sqrt() * x0 + (1 - ab).sqrt() * eps) * num
        x0_spans = self.index.gather(x0)
        probs = ab.unsqueeze(2) * x0_spans + (1 - ab.unsqueeze(2)) / self.index.k
        return x_num + self.index.draw(probs * self.index.valid, generator), eps

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        t = torch.randint(1, self.steps + 1, (x0.shape[0],), device=x0.device)
        x_t, eps = self.noised(x0, t)
        out = self.denoise(x_t, t)
        return torch.cat([out, eps, x_t, t.unsqueeze(1).to(out.dtype)], dim=1)

    def posterior(self, x_t: torch.Tensor, x0_probs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Padded q(x_{t−1} | x_t, x₀) per span, for x₀ given as padded probabilities.

        ∝ [α_t x_t + (1 − α_t)/K] ⊙ [ᾱ_{t−1} x₀ + (1 − ᾱ_{t−1})/K] (Hoogeboom et al. 2021).
        """
        k, valid = self.index.k, self.index.valid
        a = self.alpha[t].view(-1, 1, 1)
        ab_prev = self.alpha_bar[t - 1].view(-1, 1, 1)
        xt = self.index.gather(x_t)
        unnorm = (a * xt + (1 - a) / k) * (ab_prev * x0_probs + (1 - ab_prev) / k) * valid
        return unnorm / unnorm.sum(2, keepdim=True)

    def x0_probs(self, out: torch.Tensor) -> torch.Tensor:
        """Padded softmax of the x̂₀ logits per span."""
        logits = out[:, self.index.pos].masked_fill(~self.index.valid, -math.inf)
        return torch.softmax(logits, dim=2)


class DiffusionLoss(nn.Module):
    """Per-row loss: numeric ε-MSE + T·multinomial KL, with a ``reduction`` attribute.

    ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"`` (one loss per row), which
    is what Opacus's ghost clipping and the fused clipper ask of a criterion.
    """

    reduction: str

    def __init__(self, model: TabularDenoiser, spans: tuple[SpanInfo, ...]) -> None:
        super().__init__()
        self.model, self.reduction = model, "mean"
        self.width, self.steps = model.width, model.steps
        self.numeric = [s for s in spans if s.kind == "numeric"]
        # A missing value's slot is masked. A row at an atom is not: its slot holds
        # the fixed public code 0, and learning to denoise it keeps the reverse chain
        # of that value in distribution; masked, the chain drifts where the denoiser
        # was never trained, and the drifting value pulls the mode away from the
        # atoms (measured on tests/test_atoms.py's table: 27 % zeros instead of 40 %
        # when masked, 34 % when not).
        self.missing_of = {s.column: s for s in spans if s.kind == "missing"}

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d, m = self.width, self.model
        out, eps, x_t = output[:, :d], output[:, d : 2 * d], output[:, 2 * d : 3 * d]
        t = output[:, 3 * d].round().long()
        loss = torch.zeros(output.shape[0], device=output.device, dtype=output.dtype)
        if self.numeric:
            mse = torch.zeros_like(loss)
            for span in self.numeric:
                err = (out[:, span.start] - eps[:, span.start]) ** 2
                miss = self.missing_of.get(span.column)
                if miss is not None:  # a missing value's slot holds no information
                    err = err * target[:, miss.start]
                mse = mse + err
            loss = loss + mse / len(self.numeric)
        if m.index.n_spans:
            true = m.posterior(x_t, m.index.gather(target), t)
            pred = m.posterior(x_t, m.x0_probs(out), t)
            kl = (true * (torch.log(true + _TINY) - torch.log(pred + _TINY))).sum(2)
            loss = loss + self.steps * kl.mean(1)
        if self.reduction == "none":
            return loss
        return loss.sum() if self.reduction == "sum" else loss.mean()


@register_family("dp-diffusion")
class DPDiffusion(GeneratorFamily):
    """TabDDPM-style diffusion: Gaussian on numerics, multinomial on one-hot spans, DP-SGD."""

    def build_module(self) -> nn.Module:
        return TabularDenoiser(
            self.transformer.spans,
            self.transformer.width,
            self.settings.hidden,
            self.settings.diffusion_steps,
        )

    def private_module(self) -> nn.Module:
        # The denoiser is the only trained part and sees real rows through the loss.
        return self.module

    def criterion(self) -> DiffusionLoss:
        return DiffusionLoss(self._model(), self.transformer.spans)

    def _model(self) -> TabularDenoiser:
        if not isinstance(self.module, TabularDenoiser):  # pragma: no cover - build_module
            raise TypeError("module is not a TabularDenoiser")
        return self.module

    @torch.no_grad()
    def _last_step(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the reverse process down to x₁; return p(x₀ | x₁) as (params, numeric mean).

        Returns the padded span probabilities of x₀ and the ``(n, width)`` row
        holding the mean of x₀ on numeric values (the last DDPM step adds no noise).
        """
        m = self._model()
        device = m.alpha_bar.device
        num = m.index.numeric
        x = torch.randn(n, m.width, generator=generator, device=device) * num
        uniform = m.index.valid / m.index.k
        x = x + m.index.draw(uniform.expand(n, -1, -1), generator)
        for step in range(m.steps, 0, -1):
            t = torch.full((n,), step, dtype=torch.long, device=device)
            out = m.denoise(x, t)
            ab, ab_prev = m.alpha_bar[step], m.alpha_bar[step - 1]
            x0 = ((x - (1 - ab).sqrt() * out) / ab.sqrt()).clamp(-1, 1)
            beta = 1 - m.alpha[step]
            # DDPM posterior mean and variance of the numeric values (Ho et al. 2020, eq. 7).
            mean = (ab_prev.sqrt() * beta * x0 + m.alpha[step].sqrt() * (1 - ab_prev) * x) / (
                1 - ab
            )
            cat = m.posterior(x, m.x0_probs(out), t)
            if step == 1:
                return cat, mean * num
            var = beta * (1 - ab_prev) / (1 - ab)
            noise = torch.randn(n, m.width, generator=generator, device=device)
            x = (mean + var.sqrt() * noise) * num + m.index.draw(cat, generator)
        raise AssertionError("unreachable: steps >= 2")  # pragma: no cover

    def sample_encoded(self, n: int, generator: torch.Generator) -> torch.Tensor:
        m = self._model()
        cat, mean = self._last_step(n, generator)
        return mean.clamp(-1, 1) + m.index.draw(cat, generator)

    def sample_distribution(self, n: int, generator: torch.Generator) -> RowDistribution:
        """p(x₀ | x₁) for ``n`` reverse chains run down to x₁.

        Given x₁ the columns are independent: the multinomial posterior per one-hot
        span and a point (the DDPM mean, no noise at the last step) per numeric
        value. The constrained decoder renormalises over allowed categories, and
        conditional sampling weights each chain by the probability of the
        condition. The last step changes little, so conditions the chain rarely
        reaches are met mostly by redrawing chains (bounded, as for point rows).
        """
        m = self._model()
        cat, mean = self._last_step(n, generator)
        params = mean.double().clamp(-1, 1)
        # Padding slots repeat a span's last position and hold probability 0.
        index = m.index.pos.reshape(1, -1).expand(n, -1)
        params.scatter_add_(1, index, cat.reshape(n, -1).double())
        scale = torch.zeros_like(params, dtype=torch.float32)
        return RowDistribution(params.cpu().numpy(), scale.cpu().numpy())
