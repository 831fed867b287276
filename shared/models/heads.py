"""Conditional heads: a few schema columns given a conditioning vector.

The staged generator (:mod:`shared.models.staged`) models the treatment given
the covariates, the outcome given the covariates and the treatment, and
post-treatment columns given everything before them, each with one
:class:`ConditionalHead`. A head predicts the schema-only encoding of its
columns (:class:`shared.transforms.SpanInfo` spans): a softmax per categorical,
missing-indicator or atoms span and a heteroscedastic Gaussian (mean, log-std) per
numeric value, the same output families as the VAE's decoder.

With ``arms > 1`` the head is ``f(x) + Σ_a t_a · g_a(x)``: a surface shared by
every arm plus an offset network per non-reference arm, selected by the
treatment's one-hot code. With MLP offsets it represents exactly what a
T-learner (one network per arm; Künzel et al., PNAS 2019) represents, so
treatment-effect heterogeneity (``t × x`` interactions) is there by
construction, but the common structure is learned once from every row, and the
effect ``g_a(x)`` is a parameter of its own rather than the difference of two
noisy DP fits.

The shared surface is a linear map plus a one-hidden-layer MLP (a residual
pair): under DP-SGD's noise the linear part picks up the dominant linear signal
quickly and the MLP adds curvature where the data support it. The offsets are
linear by default (``offset_mlp=False``): an effect that varies linearly in the
encoded covariates (a per-category shift for a categorical one) is still
represented, and the offsets carry a tenth of the weights, so less DP noise
reaches the treatment effect. On the built-in cohort at ε = 3 the model's ATE
across six seeds had a standard deviation of 1.2 mg/dL with linear offsets
against 2.3 with MLP offsets. Only ``nn.Linear`` layers, so Opacus ghost
clipping applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.errors import ModelError
from shared.transforms import SpanInfo, mode_spans

LOGSTD_MIN, LOGSTD_MAX = -5.0, 1.0


def head_width(spans: tuple[SpanInfo, ...]) -> int:
    """Output width for ``spans``: logits per one-hot slot, (mean, log-std) per numeric."""
    return sum(2 if s.kind == "numeric" else s.width for s in spans)


class ConditionalHead(nn.Module):
    """``f(x) + Σ_a t_a · g_a(x)``: a shared surface plus one offset network per treated arm.

    ``f`` is ``linear(x) + mlp(x)``; each ``g_a`` is ``linear(x)``, plus an MLP of its
    own when ``offset_mlp``. With ``arms == 1`` only ``f`` exists.
    """

    def __init__(
        self,
        in_dim: int,
        spans: tuple[SpanInfo, ...],
        hidden: int,
        arms: int,
        *,
        offset_mlp: bool = False,
    ) -> None:
        super().__init__()
        self.spans, self.arms = spans, arms
        out = head_width(spans)
        # Index 0 is the shared surface f; index a >= 1 is arm a's offset g_a.
        self.linear = nn.ModuleList(nn.Linear(in_dim, out) for _ in range(arms))
        mlps = arms if offset_mlp else 1
        self.hidden = nn.ModuleList(nn.Linear(in_dim, hidden) for _ in range(mlps))
        self.out = nn.ModuleList(nn.Linear(hidden, out, bias=False) for _ in range(mlps))

    def forward(self, x: torch.Tensor, arm: torch.Tensor | None = None) -> torch.Tensor:
        """Head parameters for conditioning rows ``x``.

        ``arm`` is the one-hot (n, arms) treatment code of each row (its first
        slot is the reference arm); it may be omitted when ``arms == 1``.
        """
        outs = [lin(x) for lin in self.linear]
        for a, (h, o) in enumerate(zip(self.hidden, self.out, strict=True)):
            outs[a] = outs[a] + o(F.relu(h(x)))
        base: torch.Tensor = outs[0]
        if self.arms == 1:
            return base
        if arm is None:
            raise ModelError("a head with several arms needs the one-hot arm of each row")
        offsets = torch.stack(outs[1:], dim=1)  # (n, arms - 1, out)
        return base + (offsets * arm[:, 1:].unsqueeze(2)).sum(dim=1)


def span_nll(
    spans: tuple[SpanInfo, ...], params: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Per-row negative log-likelihood of ``target`` (the spans' encoding) under ``params``.

    A free function (not a head method) so that the loss holds no parameters.
    """
    loss = torch.zeros(target.shape[0], device=target.device, dtype=params.dtype)
    # Slot 0 of a missing-indicator or atoms span means "the value slot holds a value".
    present = {c: target[:, s.start] for c, s in mode_spans(spans).items()}
    pos = 0
    for span in spans:
        if span.kind == "numeric":
            mean = params[:, pos]
            ls = params[:, pos + 1].clamp(LOGSTD_MIN, LOGSTD_MAX)
            nll = 0.5 * ((target[:, span.start] - mean) / torch.exp(ls)) ** 2 + ls
            if span.column in present:  # no target for a missing value or an atom
                nll = nll * present[span.column]
            loss = loss + nll
            pos += 2
        else:
            logits = params[:, pos : pos + span.width]
            labels = target[:, span.start : span.stop].argmax(1)
            loss = loss + F.cross_entropy(logits, labels, reduction="none")
            pos += span.width
    return loss


def zero_absent_values(spans: tuple[SpanInfo, ...], encoded: torch.Tensor) -> torch.Tensor:
    """``encoded`` with each numeric value slot set to 0 in rows that hold no value there.

    :meth:`~shared.transforms.TableTransformer.encode` writes 0 in the value slot of
    a missing value or an atom, but a generator may draw anything there (decoding
    ignores it). Heads were trained on the encoder's form, so rows drawn by another
    model are put in that form before a head conditions on them; otherwise the
    drawn values shift the head's input means and, with them, its output.
    """
    out = encoded.clone()
    values = {s.column: s.start for s in spans if s.kind == "numeric"}
    for column, mode in mode_spans(spans).items():
        absent = out[:, mode.start] < 0.5
        out[:, values[column]] = out[:, values[column]].masked_fill(absent, 0.0)
    return out


@torch.no_grad()
def span_draw(
    spans: tuple[SpanInfo, ...], params: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Sample the spans' encoding from head parameters, one row per row of ``params``."""
    n = params.shape[0]
    out = torch.zeros(n, max((s.stop for s in spans), default=0), device=params.device)
    pos = 0
    for span in spans:
        if span.kind == "numeric":
            ls = params[:, pos + 1].clamp(LOGSTD_MIN, LOGSTD_MAX)
            noise = torch.randn(n, generator=generator, device=params.device)
            out[:, span.start] = (params[:, pos] + torch.exp(ls) * noise).clamp(-1.0, 1.0)
            pos += 2
        else:
            probs = torch.softmax(params[:, pos : pos + span.width], dim=1)
            idx = torch.multinomial(probs, 1, generator=generator)
            out[:, span.start : span.stop].scatter_(1, idx, 1.0)
            pos += span.width
    return out
