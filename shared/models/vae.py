"""DP tabular variational autoencoder (the default family, ``"dp-vae"``).

Kingma & Welling, "Auto-Encoding Variational Bayes" (ICLR 2014). Heads follow
the schema-only encoding: a softmax per categorical, missing-indicator or atoms
span, and a heteroscedastic Gaussian per numeric value (tanh mean, learned
log-std), whose loss is masked where the value is missing or at an atom.

Kept deliberately small (one hidden layer of 64, latent 8): under DP-SGD the
noise grows with the parameter count while the clipped signal does not, and
measured at ε = 1 this size learns joint structure where 2 × 128 learns only
marginals (see the project notes). Only ``nn.Linear`` layers are used, so Opacus
ghost clipping applies, and there is no BatchNorm (which mixes rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.constrained import RowDistribution
from shared.models.base import GeneratorFamily, register_family
from shared.transforms import SpanInfo, mode_spans

_LOGSTD_MIN, _LOGSTD_MAX = -5.0, 1.0


class TabularVAE(nn.Module):
    """Encoder/decoder MLPs; ``forward`` returns ``[decoder_out | mu | logvar]``."""

    def __init__(self, data_dim: int, n_numeric: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.data_dim, self.n_numeric, self.latent = data_dim, n_numeric, latent
        self.enc_hidden = nn.Linear(data_dim, hidden)
        self.enc_out = nn.Linear(hidden, 2 * latent)
        self.dec_hidden = nn.Linear(latent, hidden)
        # data_dim logits / means, then one log-std per numeric value.
        self.dec_out = nn.Linear(hidden, data_dim + n_numeric)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output for latent codes ``z``."""
        out: torch.Tensor = self.dec_out(F.relu(self.dec_hidden(z)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = self.enc_out(F.relu(self.enc_hidden(x)))
        mu, logvar = stats[:, : self.latent], stats[:, self.latent :].clamp(-10.0, 10.0)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.cat([self.decode(z), mu, logvar], dim=1)


class VAELoss(nn.Module):
    """Negative ELBO per row: reconstruction (CE + Gaussian NLL) + β·KL.

    ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"`` (one loss per row), which
    is what Opacus's ghost clipping asks of a criterion.
    """

    def __init__(
        self,
        spans: tuple[SpanInfo, ...],
        data_dim: int,
        latent: int,
        kl_weight: float,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.spans, self.data_dim, self.latent = spans, data_dim, latent
        self.kl_weight, self.reduction = kl_weight, reduction
        self.numeric = [s for s in spans if s.kind == "numeric"]
        self.missing_of = mode_spans(spans)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = self.data_dim
        dec, logstd = output[:, :d], output[:, d : d + len(self.numeric)]
        mu, logvar = output[:, -2 * self.latent : -self.latent], output[:, -self.latent :]
        loss = torch.zeros(output.shape[0], device=output.device, dtype=output.dtype)
        for span in self.spans:
            if span.kind != "numeric":
                logits = dec[:, span.start : span.stop]
                loss = loss + F.cross_entropy(
                    logits, target[:, span.start : span.stop].argmax(1), reduction="none"
                )
        for j, span in enumerate(self.numeric):
            mean = torch.tanh(dec[:, span.start])
            ls = logstd[:, j].clamp(_LOGSTD_MIN, _LOGSTD_MAX)
            nll = 0.5 * ((target[:, span.start] - mean) / torch.exp(ls)) ** 2 + ls
            miss = self.missing_of.get(span.column)
            if miss is not None:  # no reconstruction target when missing or at an atom
                nll = nll * target[:, miss.start]
            loss = loss + nll
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
        loss = loss + self.kl_weight * kl
        if self.reduction == "none":
            return loss
        return loss.sum() if self.reduction == "sum" else loss.mean()


@register_family("dp-vae")
class DPVAE(GeneratorFamily):
    """The default family: a small tabular VAE trained end to end with DP-SGD."""

    def build_module(self) -> nn.Module:
        n_numeric = sum(1 for s in self.transformer.spans if s.kind == "numeric")
        return TabularVAE(
            self.transformer.width, n_numeric, self.settings.hidden, self.settings.latent
        )

    def private_module(self) -> nn.Module:
        # Encoder and decoder both see real rows through the reconstruction loss.
        return self.module

    def criterion(self) -> nn.Module:
        return VAELoss(
            self.transformer.spans,
            self.transformer.width,
            self.settings.latent,
            self.settings.kl_weight,
        )

    def _span_index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Column positions of the one-hot spans (padded to one width) and of the numerics."""
        spans = [s for s in self.transformer.spans if s.kind != "numeric"]
        width = max((s.width for s in spans), default=0)
        pos = [[s.start + min(k, s.width - 1) for k in range(width)] for s in spans]
        valid = [[k < s.width for k in range(width)] for s in spans]
        numeric = [s.start for s in self.transformer.spans if s.kind == "numeric"]
        return (
            torch.tensor(pos, dtype=torch.long, device=device).reshape(len(spans), width),
            torch.tensor(valid, dtype=torch.bool, device=device).reshape(len(spans), width),
            torch.tensor(numeric, dtype=torch.long, device=device),
        )

    def sample_encoded(self, n: int, generator: torch.Generator) -> torch.Tensor:
        vae = self.module
        if not isinstance(vae, TabularVAE):  # pragma: no cover - guarded by build_module
            raise TypeError("module is not a TabularVAE")
        device = next(vae.parameters()).device
        z = torch.randn(n, vae.latent, generator=generator, device=device)
        dec = vae.decode(z)
        out = torch.zeros(n, vae.data_dim, device=device)
        # Gumbel-max trick: argmax(logits + G), G = -log(-log U), is an exact draw from
        # softmax(logits) (Gumbel 1954; Maddison et al. 2014), for every span in one
        # vectorised pass instead of a softmax and torch.multinomial per span.
        u = torch.rand(n, vae.data_dim, generator=generator, device=device)
        scores = dec[:, : vae.data_dim] - torch.log(-torch.log(u.clamp_(min=1e-30)))
        cat_pos, cat_valid, num_pos = self._span_index(device)
        if cat_pos.numel():
            gathered = scores[:, cat_pos].masked_fill(~cat_valid, float("-inf"))
            choice = cat_pos[:, 0] + gathered.argmax(2)  # (n, spans): column of each draw
            out.scatter_(1, choice, 1.0)
        if num_pos.numel():
            mean = torch.tanh(dec[:, num_pos])
            ls = dec[:, vae.data_dim : vae.data_dim + len(num_pos)].clamp(_LOGSTD_MIN, _LOGSTD_MAX)
            noise = torch.randn(n, len(num_pos), generator=generator, device=device)
            out[:, num_pos] = (mean + torch.exp(ls) * noise).clamp(-1, 1)
        return out

    def sample_distribution(self, n: int, generator: torch.Generator) -> RowDistribution:
        """Per-row decoder distributions for ``n`` latent draws ``z ~ N(0, I)``.

        Given z the columns are independent: a softmax per one-hot span and a
        Gaussian (tanh mean, learned std) per numeric value. Exposing these lets
        the constrained decoder renormalise over allowed values and lets
        conditional sampling weight each z by the probability of the condition.
        """
        vae = self.module
        if not isinstance(vae, TabularVAE):  # pragma: no cover - guarded by build_module
            raise TypeError("module is not a TabularVAE")
        device = next(vae.parameters()).device
        z = torch.randn(n, vae.latent, generator=generator, device=device)
        dec = vae.decode(z)
        logits = dec[:, : vae.data_dim].double()
        scale = torch.zeros(n, vae.data_dim, device=device)
        cat_pos, cat_valid, num_pos = self._span_index(device)
        params = torch.zeros_like(logits)
        if cat_pos.numel():
            # Softmax of every span at once, in float64 so that conditional sampling's
            # log-weights do not underflow. member[j, s] = 1 when position j is in span s;
            # the padding of cat_pos repeats a span's last position, so its max is its own.
            member = torch.zeros(vae.data_dim, len(cat_pos), dtype=torch.float64, device=device)
            member[cat_pos[cat_valid], cat_valid.nonzero()[:, 0]] = 1.0
            span_max = logits[:, cat_pos].amax(dim=2)
            e = torch.exp(logits - span_max @ member.T) * member.sum(dim=1)
            params = e / (e @ member @ member.T).clamp(min=torch.finfo(torch.float64).tiny)
        if num_pos.numel():
            ls = dec[:, vae.data_dim : vae.data_dim + len(num_pos)].clamp(_LOGSTD_MIN, _LOGSTD_MAX)
            params[:, num_pos] = torch.tanh(logits[:, num_pos])
            scale[:, num_pos] = torch.exp(ls)
        return RowDistribution(params.cpu().numpy(), scale.cpu().numpy())
