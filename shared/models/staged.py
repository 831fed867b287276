"""Staged, causal-aware generation (``"staged"``), after STEAM.

Amad et al., "Improving the generation of synthetic data for causal inference"
(STEAM, 2025) generate in the order the causal story runs: the covariates X,
then the treatment T given X, then the outcome Y given X and T. A generator
that models every column alike can score well on fidelity and still distort
E[Y | X, T=1] − E[Y | X, T=0]; modelling the two conditionals directly keeps
the treatment effect usable.

Stages (roles come from the public schema):

1. **covariates**: every column except the treatment, the outcome and the
   prediction target, drawn by any registered DP-SGD family whose whole module is
   trained by its per-row loss (``covariate-generator``, default ``"dp-vae"``) built on
   that sub-schema; a release family (``dp-marginal``, ``dp-copula``) has no rounds to
   share with the other stages and is refused;
2. **propensity**: T | X, a :class:`~shared.models.heads.ConditionalHead` (softmax);
3. **outcome**: Y | X, T, a shared surface plus one offset per treated arm (linear in
   X by default; ``effect-model = "mlp"`` adds a hidden layer);
4. **post-treatment**: the prediction target (if the schema names one), given
   X, T and Y, since a target such as a later adverse event is usually
   post-treatment (the evaluation also leaves it out of the adjustment set).

Privacy: the family is *one* module and its per-row loss is the sum of the
stages' losses, so one DP-SGD mechanism (each row's joint gradient clipped to C,
Gaussian noise σC on the sum) trains all stages together, with no composition
across stages; the stages share the clip norm C (a row's gradient is clipped as a
whole). The federated loop, ledger and accountant are unchanged. After the last
round a run may spend a further share of ε on the DP effect calibration
(:mod:`shared.effect`, :mod:`shared.models.staged_effect`), which moves the
treated arms' offsets onto a doubly robust estimate of the effect. Sampling is
post-processing of the released weights.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from shared.config_model import RELEASE_GENERATORS
from shared.errors import ConfigError
from shared.models.base import GeneratorFamily, build_generator, register_family
from shared.models.heads import (
    ConditionalHead,
    head_width,
    span_draw,
    span_nll,
    zero_absent_values,
)
from shared.schema import Schema
from shared.transforms import SpanInfo, TableTransformer

#: Hidden width of the conditional heads: small, because DP-SGD noise grows with
#: the parameter count while the clipped signal does not.
HEAD_HIDDEN = 16


def _sub_schema(schema: Schema, names: list[str], suffix: str) -> Schema:
    cols = tuple(schema.column(n) for n in names)
    return Schema(name=f"{schema.name}:{suffix}", columns=cols)


def _positions(transformer: TableTransformer, names: list[str]) -> list[int]:
    """Positions of ``names``' spans in the full encoding (schema order kept)."""
    wanted = set(names)
    return [i for s in transformer.spans if s.column in wanted for i in range(s.start, s.stop)]


class StagedModule(nn.Module):
    """All stages' weights; ``forward`` returns every stage's output side by side."""

    def __init__(
        self,
        covariates: nn.Module,
        propensity: ConditionalHead,
        outcome: ConditionalHead,
        post: ConditionalHead | None,
        index: dict[str, list[int]],
    ) -> None:
        super().__init__()
        self.covariates, self.propensity, self.outcome, self.post = (
            covariates,
            propensity,
            outcome,
            post,
        )
        # Non-persistent: positions follow from the schema, so they stay out of
        # the state dict (the server averages only weights).
        for name, pos in index.items():
            self.register_buffer(f"idx_{name}", torch.tensor(pos, dtype=torch.long), False)

    def positions(self, name: str) -> torch.Tensor:
        """Positions of stage ``name``'s columns in the full encoding."""
        idx: torch.Tensor = getattr(self, f"idx_{name}")
        return idx

    def part(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The columns of stage ``name`` from full encoded rows ``x``."""
        return x.index_select(1, self.positions(name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Teacher forcing: every stage conditions on the real row's earlier stages.
        cov, t = self.part(x, "cov"), self.part(x, "treatment")
        outs = [self.covariates(cov), self.propensity(cov), self.outcome(cov, t)]
        if self.post is not None:
            cond = torch.cat([cov, t, self.part(x, "outcome")], dim=1)
            outs.append(self.post(cond))
        return torch.cat(outs, dim=1)


class StagedLoss(nn.Module):
    """Per-row sum of the stages' negative log-likelihoods (one DP mechanism for all)."""

    def __init__(
        self,
        covariate_loss: nn.Module,
        widths: list[int],
        spans: list[tuple[SpanInfo, ...]],
        index: dict[str, list[int]],
        reduction: str = "mean",
        *,
        propensity_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.covariate_loss, self.widths, self.spans = covariate_loss, widths, spans
        self.propensity_weight = propensity_weight
        per_row: Any = covariate_loss  # nn.Module's typed __setattr__ refuses a str
        per_row.reduction = "none"  # per-row losses; reduced below
        self.names = ["cov", "treatment", "outcome", "post"][: len(widths)]
        self.index = {name: torch.tensor(pos, dtype=torch.long) for name, pos in index.items()}
        self.reduction = reduction

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        parts = torch.split(output, self.widths, dim=1)
        idx = {n: i.to(target.device) for n, i in self.index.items()}
        loss: torch.Tensor = self.covariate_loss(parts[0], target.index_select(1, idx["cov"]))
        for name, params, spans in zip(self.names[1:], parts[1:], self.spans, strict=True):
            nll = span_nll(spans, params, target.index_select(1, idx[name]))
            loss = loss + (self.propensity_weight * nll if name == "treatment" else nll)
        if self.reduction == "none":
            return loss
        return loss.sum() if self.reduction == "sum" else loss.mean()


@register_family("staged")
class StagedGenerator(GeneratorFamily):
    """Covariates from any family, then DP propensity and DP outcome models."""

    # Its stages encode through their own sub-transformers, so one encoder cannot be set.
    supports_numeric_encoder = False

    def build_module(self) -> nn.Module:
        roles = self.schema.roles
        treatment, outcome = roles.get("treatment"), roles.get("outcome")
        if not treatment or not outcome:
            raise ConfigError(
                f"generator 'staged' needs a schema with 'treatment' and 'outcome' roles; schema "
                f"{self.schema.name!r} has {sorted(roles) or 'none'}. Add the roles to the schema "
                "or use generator 'dp-vae'."
            )
        if self.schema.column(treatment).kind != "categorical":
            raise ConfigError(
                f"generator 'staged' needs a categorical treatment; {treatment!r} is "
                f"{self.schema.column(treatment).kind}. Declare it with its category list."
            )
        target = roles.get("target")
        post = [target] if target and target not in (treatment, outcome) else []
        cov = [n for n in self.schema.names if n not in {treatment, outcome, *post}]
        if not cov:
            raise ConfigError("generator 'staged' needs at least one covariate column")
        cov_family = self.settings.covariate_generator
        if cov_family == "staged":
            raise ConfigError("covariate-generator cannot be 'staged'; use e.g. 'dp-vae'")
        if cov_family in RELEASE_GENERATORS:
            raise ConfigError(
                f"covariate-generator {cov_family!r} is fitted from noisy releases, not DP-SGD "
                "rounds, and the staged generator trains all three stages in the same rounds; "
                "use a DP-SGD family such as 'dp-vae' or 'dp-diffusion' for the covariates"
            )
        self.cov_family = build_generator(
            _sub_schema(self.schema, cov, "covariates"),
            replace(self.settings, generator=cov_family),
        )
        if self.cov_family.private_module() is not self.cov_family.module:
            raise ConfigError(
                f"covariate-generator {cov_family!r} trains only part of its module with DP "
                "(e.g. a GAN's discriminator); the staged generator needs a family whose whole "
                "module is trained by its per-row loss, such as 'dp-vae'."
            )
        self.index = {
            "cov": _positions(self.transformer, cov),
            "treatment": _positions(self.transformer, [treatment]),
            "outcome": _positions(self.transformer, [outcome]),
        }
        self.stage_spans = [
            TableTransformer(_sub_schema(self.schema, [treatment], "t")).spans,
            TableTransformer(_sub_schema(self.schema, [outcome], "y")).spans,
        ]
        if post:
            self.index["post"] = _positions(self.transformer, post)
            self.stage_spans.append(TableTransformer(_sub_schema(self.schema, post, "post")).spans)
        n_cov, n_t = len(self.index["cov"]), len(self.index["treatment"])
        n_y = len(self.index["outcome"])
        t_spans, y_spans = self.stage_spans[0], self.stage_spans[1]
        post_head = (
            ConditionalHead(n_cov + n_t + n_y, self.stage_spans[2], HEAD_HIDDEN, 1)
            if post
            else None
        )
        return StagedModule(
            self.cov_family.module,
            ConditionalHead(n_cov, t_spans, HEAD_HIDDEN, 1),
            ConditionalHead(
                n_cov,
                y_spans,
                HEAD_HIDDEN,
                n_t,
                offset_mlp=self.settings.effect_model == "mlp",
            ),
            post_head,
            self.index,
        )

    def _covariate_width(self) -> int:
        # Output width of the covariate family's module, found by one dry forward
        # with the global RNG left untouched (a VAE draws its latent noise).
        device = next(self.cov_family.module.parameters()).device
        # The probe runs where the module is (a site may train on CUDA), and that
        # device's generator is forked too.
        forked = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked), torch.no_grad():
            self.cov_family.module.eval()
            probe = torch.zeros(2, self.cov_family.transformer.width, device=device)
            width = int(self.cov_family.module(probe).shape[1])
            self.cov_family.module.train()
        return width

    def private_module(self) -> nn.Module:
        # Every stage sees real rows through its likelihood.
        return self.module

    def criterion(self) -> nn.Module:
        widths = [self._covariate_width(), *(head_width(s) for s in self.stage_spans)]
        return StagedLoss(
            self.cov_family.criterion(),
            widths,
            self.stage_spans,
            self.index,
            propensity_weight=self.settings.propensity_weight,
        )

    def sample_encoded(self, n: int, generator: torch.Generator) -> torch.Tensor:
        staged = self.module
        if not isinstance(staged, StagedModule):  # pragma: no cover - guarded by build_module
            raise TypeError("module is not a StagedModule")
        # The heads were trained on encoded real rows, so drawn covariates take that form.
        cov = zero_absent_values(
            self.cov_family.transformer.spans, self.cov_family.sample_encoded(n, generator)
        )
        t = span_draw(self.stage_spans[0], staged.propensity(cov), generator)
        y_spans = self.stage_spans[1]
        y = zero_absent_values(y_spans, span_draw(y_spans, staged.outcome(cov, t), generator))
        out = torch.zeros(n, self.transformer.width, device=cov.device)
        out[:, staged.positions("cov")] = cov
        out[:, staged.positions("treatment")] = t
        out[:, staged.positions("outcome")] = y
        if staged.post is not None:
            post = span_draw(self.stage_spans[2], staged.post(torch.cat([cov, t, y], 1)), generator)
            out[:, staged.positions("post")] = post
        return out
