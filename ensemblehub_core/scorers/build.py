"""Build scorers from config (`ScorerConfig`), sharing member models where the config says so."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ensemblehub_core.exceptions import ConfigError
from ensemblehub_core.scorers.base import Scorer

if TYPE_CHECKING:
    from ensemblehub_core.config import ScorerConfig
    from ensemblehub_core.context import BuildContext
    from ensemblehub_core.generators.hf import HFGenerator

logger = logging.getLogger(__name__)

__all__ = ["agreement", "confidence", "cross_likelihood", "function", "judge", "likelihood", "prm", "reward_model"]


def _local_generator(cfg: ScorerConfig, ctx: BuildContext) -> tuple[HFGenerator, str | None]:
    """The local model a likelihood/judge scorer runs: a member's, or its own from ``model``."""
    from ensemblehub_core.generators.hf import HFGenerator
    from ensemblehub_core.models import ModelSpec

    if cfg.member is not None:
        gen = ctx.members[cfg.member]
        if not isinstance(gen, HFGenerator):
            raise ConfigError(
                f"scorer '{cfg.type}' needs a local (backend: hf) model, and member '{cfg.member}' is "
                f"{type(gen).__name__}; point the scorer at an hf member or set 'model:'"
            )
        return gen, cfg.member
    if not cfg.model:
        raise ConfigError(f"scorer '{cfg.type}' needs 'member:' (a local member) or 'model:' (a model source)")
    loaded = ctx.pool.get(ModelSpec(source=cfg.model, dtype=cfg.dtype, device=cfg.device))
    return HFGenerator(cfg.display_name, loaded, prompt_format=cfg.options.get("prompt_format")), None


def likelihood(cfg: ScorerConfig, ctx: BuildContext) -> Scorer:
    from ensemblehub_core.scorers.likelihood import LikelihoodScorer

    gen, member = _local_generator(cfg, ctx)
    return LikelihoodScorer(cfg.display_name, gen, member=member)


def _options(cfg: ScorerConfig, allowed: set[str]) -> dict[str, Any]:
    """The scorer's options, refusing names it does not know (a typo would otherwise be ignored)."""
    unknown = sorted(set(cfg.options) - allowed)
    if unknown:
        raise ConfigError(f"scorer '{cfg.display_name}': unknown option(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(allowed)) or '(none)'}")
    return dict(cfg.options)


def judge(cfg: ScorerConfig, ctx: BuildContext) -> Scorer:
    from ensemblehub_core.scorers.judge import (
        DEFAULT_COMPARE_TEMPLATE,
        DEFAULT_JUDGE_TEMPLATE,
        CompareJudgeScorer,
        JudgeScorer,
    )

    o = _options(cfg, {"mode", "template", "shifts", "prompt_format"})
    mode = o.get("mode", "yes_no")
    gen, member = _local_generator(cfg, ctx)
    if mode == "compare":
        shifts = o.get("shifts")
        if shifts is not None and (not isinstance(shifts, int) or shifts < 1):
            raise ConfigError(f"scorer '{cfg.display_name}': shifts must be a positive integer, got {shifts!r}")
        return CompareJudgeScorer(cfg.display_name, gen, template=o.get("template", DEFAULT_COMPARE_TEMPLATE),
                                  shifts=shifts, member=member)
    if mode != "yes_no":
        raise ConfigError(f"scorer '{cfg.display_name}': mode must be 'yes_no' or 'compare', got {mode!r}")
    return JudgeScorer(cfg.display_name, gen, template=o.get("template", DEFAULT_JUDGE_TEMPLATE), member=member)


def confidence(cfg: ScorerConfig, ctx: BuildContext) -> Scorer:
    from ensemblehub_core.scorers.confidence import ConfidenceScorer

    o = _options(cfg, {"reduction", "k", "calibration"})
    calibration = o.get("calibration") or {}
    if not isinstance(calibration, dict):
        raise ConfigError(f"scorer '{cfg.display_name}': calibration must map member names to [slope, intercept]")
    unknown = sorted(set(calibration) - set(ctx.members))
    if unknown:
        raise ConfigError(f"scorer '{cfg.display_name}': calibration names unknown member(s) {', '.join(unknown)}; "
                          f"members: {', '.join(ctx.members)}")
    uncovered = [m for m in ctx.members if m not in calibration]
    if calibration and uncovered:
        logger.warning("scorer '%s': calibration has no [slope, intercept] for %s; their candidates abstain "
                       "(run `ensemblehub calibrate` for this ensemble's members)", cfg.display_name,
                       ", ".join(uncovered))
    return ConfidenceScorer(cfg.display_name, reduction=o.get("reduction", "mean"), k=int(o.get("k", 4)),
                            calibration=calibration)


def cross_likelihood(cfg: ScorerConfig, ctx: BuildContext) -> Scorer:
    from ensemblehub_core.generators.hf import HFGenerator
    from ensemblehub_core.scorers.cross_likelihood import CrossLikelihoodScorer
    from ensemblehub_core.scorers.likelihood import LikelihoodScorer

    o = _options(cfg, {"members"})
    names = o.get("members") or [n for n, g in ctx.members.items() if isinstance(g, HFGenerator)]
    committee = []
    for name in names:
        gen = ctx.members.get(name)
        if not isinstance(gen, HFGenerator):
            raise ConfigError(
                f"scorer '{cfg.display_name}': committee member '{name}' must be a local (backend: hf) member; "
                f"local members: {', '.join(n for n, g in ctx.members.items() if isinstance(g, HFGenerator))}"
            )
        committee.append(LikelihoodScorer(f"likelihood:{name}", gen, member=name))
    if not committee:
        raise ConfigError(f"scorer '{cfg.display_name}' needs at least one local (backend: hf) member")
    return CrossLikelihoodScorer(cfg.display_name, committee)


def agreement(cfg: ScorerConfig, ctx: BuildContext) -> Scorer:
    from ensemblehub_core.scorers.agreement import AgreementScorer

    o = _options(cfg, {"similarity", "extractor"})
    return AgreementScorer(cfg.display_name, similarity=o.get("similarity", "auto"),
                           extractor=o.get("extractor", "auto"))


def _model_for(cfg: ScorerConfig, ctx: BuildContext, kind: str) -> Any:
    from ensemblehub_core.models import ModelSpec

    if not cfg.model:
        raise ConfigError(f"scorer '{cfg.type}' needs 'model:' (a hub id or a local folder of the checkpoint)")
    trust = bool(cfg.options.get("trust_remote_code", False))
    spec = ModelSpec(source=cfg.model, dtype=cfg.dtype, device=cfg.device, trust_remote_code=trust,
                     kind=cfg.options.get("kind", "auto" if trust else kind))
    return ctx.pool.get(spec)


def prm(cfg: ScorerConfig, ctx: BuildContext) -> Scorer:
    from ensemblehub_core.scorers.prm import DEFAULT_PRM_SYSTEM, PRMScorer

    loaded = _model_for(cfg, ctx, "token_classification")
    o = cfg.options
    return PRMScorer(
        cfg.display_name, loaded.model, loaded.tokenizer,
        separator=o.get("separator", "<extra_0>"), step_delimiter=o.get("step_delimiter", "\n\n"),
        aggregation=o.get("aggregation", "last"), system_prompt=o.get("system_prompt", DEFAULT_PRM_SYSTEM),
    )


def reward_model(cfg: ScorerConfig, ctx: BuildContext) -> Scorer:
    from ensemblehub_core.scorers.reward_model import RewardModelScorer

    loaded = _model_for(cfg, ctx, "sequence_classification")
    return RewardModelScorer(cfg.display_name, loaded.model, loaded.tokenizer)


def function(cfg: ScorerConfig, ctx: BuildContext) -> Scorer:
    from ensemblehub_core.registry import import_callable
    from ensemblehub_core.scorers.function import FunctionScorer

    fn = import_callable(cfg.options.get("fn"), f"scorer '{cfg.display_name}' options.fn")
    return FunctionScorer(cfg.display_name, fn, member=cfg.member)
