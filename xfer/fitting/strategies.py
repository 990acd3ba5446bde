"""Fine-tuning strategies. Each is one small function from the config to a Plan: which parameters train, at which
rates, in which phases, and the hooks (fitting/hooks.py) that add what the plain loop does not do: L2-SP's gradient,
gradual unfreezing, LoRA adapters, WiSE-FT's interpolation. Each strategy is defined here and nowhere else; adding
one means writing one function and registering it (`@strategy("name")`), here or in your own module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from xfer.config import BN_POLICIES
from xfer.errors import XferError
from xfer.fitting.device import accuracy, cpu_state, predict_logits
from xfer.fitting.hooks import Context, Hook
from xfer.models import TransferModel, add_lora, block_groups, has_lora, layer_ids, merge_lora

Selector = Callable[[TransferModel], set[str]]


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    lr: float
    trainable: Selector  # every parameter that trains at some point of this phase; all others stay frozen
    cached_features: bool = False  # head-only phase: train on backbone features computed once and cached
    bn: str = "auto"  # BatchNorm statistics: auto (frozen where the layer's parameters are) | frozen | train
    lr_scales: Callable[[TransferModel], dict[str, float]] | None = None  # per-parameter multipliers of lr
    weight_decay: float | None = None  # None: the fit's weight decay; 0 where a penalty replaces it
    hooks: tuple[Hook, ...] = ()


@dataclass(frozen=True)
class Plan:
    strategy: str
    phases: tuple[Phase, ...]
    options: dict = field(default_factory=dict)
    hooks: tuple[Hook, ...] = ()  # hooks of the whole plan (every phase's events, and after_plan)

    @property
    def backbone_epochs(self) -> int:
        """Epochs that run the whole network: the budget a from-scratch baseline gets."""
        return sum(p.epochs for p in self.phases if not p.cached_features)


def head_only(model: TransferModel) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith("head.")}


def everything(model: TransferModel) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def embedding_tables(model: TransferModel) -> set[str]:
    """Token/position embedding tables: half of MiniLM's parameters, and little to learn for them from a few
    thousand examples; keeping them frozen makes each text step ~1.3x cheaper."""
    from torch import nn

    return {f"{m_name}.{p_name}".lstrip(".") for m_name, m in model.named_modules() if isinstance(m, nn.Embedding)
            for p_name, _ in m.named_parameters(recurse=False)}


def fine_tuned(cfg) -> Selector:
    """Everything, less the embedding tables when `freeze_embeddings` is on."""
    if not cfg.freeze_embeddings:
        return everything
    return lambda model: everything(model) - embedding_tables(model)


def last_blocks(k: int, option: str = "partial: --partial-blocks") -> Selector:
    def select(model: TransferModel) -> set[str]:
        groups = block_groups(model)
        if not 1 <= k <= len(groups):
            raise XferError(f"{option} must be between 1 and {len(groups)} for this model, got {k}.")
        return head_only(model) | {n for g in groups[-k:] for n in g}

    return select


def biases(model: TransferModel) -> set[str]:
    """Bias terms, including the shift (beta) of every norm layer: what BitFit trains."""
    return {n for n, _ in model.named_parameters() if n.endswith(".bias")}


def adapters(model: TransferModel) -> set[str]:
    return {n for n, _ in model.named_parameters() if ".lora_" in n}


def decayed_rates(decay: float) -> Callable[[TransferModel], dict[str, float]]:
    """lr_l = lr * decay^(L - l): the head (depth L) at the full rate, each layer below it `decay` times slower
    (Howard & Ruder 2018; Clark et al. 2020; BEiT). Depths come from models.layer_ids (timm's block grouping)."""
    if not 0 < decay <= 1:
        raise XferError(f"--layer-decay must be in (0, 1], got {decay}.")

    def scales(model: TransferModel) -> dict[str, float]:
        ids = layer_ids(model)
        top = max(ids.values())
        return {n: decay ** (top - i) for n, i in ids.items()}

    return scales


def _top_down_groups(model: TransferModel) -> list[set[str]]:
    """The head, then the backbone's blocks from the top: the order in which gradual unfreezing opens them."""
    return [head_only(model)] + [set(g) for g in reversed(block_groups(model))]


def discriminative_rates(factor: float) -> Callable[[TransferModel], dict[str, float]]:
    """ULMFiT's discriminative fine-tuning: each group trains `factor` times slower than the one above it."""
    def scales(model: TransferModel) -> dict[str, float]:
        return {n: factor ** -d for d, g in enumerate(_top_down_groups(model)) for n in g}

    return scales


class UnfreezeFromTop(Hook):
    """Epoch e trains the top e groups (the head alone in epoch 1): a function of the epoch only, so a resumed run
    opens exactly the groups an uninterrupted one would."""

    def trainable(self, ctx: Context, epoch: int, names: frozenset[str]) -> frozenset[str]:
        groups = _top_down_groups(ctx.model)
        return names & frozenset(set().union(*groups[:max(1, epoch)]))


class L2SPGradient(Hook):
    """The L2-SP penalty (Li et al., ICML 2018): alpha/2 ||w - w0||^2 on transferred weights (w0: their values when
    the phase starts, i.e. the source's) and beta/2 ||w||^2 on the new head; it replaces weight decay on both.

    Its gradient, alpha (w - w0) and beta w, is added after each backward pass: the same as adding the penalty to
    the loss, without building that term into the autograd graph every step."""

    name = "l2-sp"

    def __init__(self, alpha: float, beta: float):
        self.alpha, self.beta = alpha, beta
        self.anchors: dict[str, torch.Tensor] | None = None

    def start(self, ctx: Context) -> None:
        params = dict(ctx.module.named_parameters())
        names = sorted(ctx.trainable)
        self.head = [params[n] for n in names if n.startswith("head.") and params[n].ndim > 1]
        transferred = [n for n in names if not n.startswith("head.")]
        if self.anchors is None:  # w0: the weights as the phase starts (a resumed fit loads them from its checkpoint)
            self.anchors = {n: params[n].detach().cpu().clone() for n in transferred}
        self.transferred = [params[n] for n in transferred]
        self.refs = [self.anchors[n].to(params[n].device) for n in transferred]

    @torch.no_grad()
    def after_backward(self, ctx: Context) -> None:
        for ps, coef, ref in ((self.transferred, self.alpha, self.refs), (self.head, self.beta, None)):
            for i, p in enumerate(ps):
                if p.grad is None:
                    continue
                p.grad.add_(p - ref[i] if ref is not None else p, alpha=coef)

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        return self.anchors

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.anchors = dict(state)


class LoRAAdapters(Hook):
    """Wraps the backbone with PEFT LoRA adapters before the phase; with `merge`, folds them into the base weights
    once the plan is over (a plain model with the same predictions)."""

    def __init__(self, options: dict, merge: bool = False):
        self.options, self.merge = options, merge

    def before_phase(self, model: TransferModel, phase) -> None:
        if not has_lora(model):
            add_lora(model, self.options)

    def after_plan(self, ctx: Context) -> dict:
        if self.merge:
            merge_lora(ctx.model)
        return {}


class WiseFTInterpolation(Hook):
    """WiSE-FT's weight-space ensemble: keeps the weights at the end of the linear-probe phase, and once fine-tuning
    is over loads (1-a) theta_probe + a theta_ft for the `a` in 0, 0.1, ..., 1 with the best validation accuracy
    (the larger `a`, i.e. the fine-tuned end, on ties)."""

    name = "wise-ft"
    alphas = tuple(i / 10 for i in range(11))

    def __init__(self):
        self.snapshot: dict[str, torch.Tensor] | None = None

    def after_phase(self, ctx: Context) -> None:
        if ctx.phase.cached_features:
            self.snapshot = cpu_state(ctx.model)

    def after_plan(self, ctx: Context) -> dict:
        if self.snapshot is None:
            raise XferError("wise-ft needs the weights after its linear-probe phase, and none were kept.")
        model, device = ctx.model, ctx.accelerator.device
        theta0 = {k: v.to(device) for k, v in self.snapshot.items()}
        theta1 = {k: v.detach().clone() for k, v in model.state_dict().items()}
        curve = []
        for a in self.alphas:
            model.load_state_dict(interpolate(theta0, theta1, a))
            logits = predict_logits(model, ctx.val, ctx.accelerator, ctx.channels_last)
            curve.append({"alpha": a, "val_accuracy": accuracy(logits, ctx.val)})
        best = max(curve, key=lambda c: (c["val_accuracy"], c["alpha"]))
        model.load_state_dict(interpolate(theta0, theta1, best["alpha"]))
        ctx.log("wise-ft: val accuracy by alpha " + "  ".join(f"{c['alpha']:.1f}:{c['val_accuracy']:.4f}"
                                                               for c in curve) + f"  -> alpha {best['alpha']:.1f}")
        return {"wise_ft": {"alpha": best["alpha"], "curve": curve}}

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        return self.snapshot

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.snapshot = dict(state)


def _probe(cfg) -> Phase:
    return Phase("linear-probe", cfg.lp_epochs, cfg.lp_lr, head_only, cached_features=True)


def top_of(cfg, select: Selector) -> Selector:
    """`select` limited to the top `cfg.top_blocks` blocks and the head, when that option is set."""
    if not cfg.top_blocks:
        return select
    top = last_blocks(cfg.top_blocks, "--top-blocks")
    return lambda model: select(model) & top(model)


def _fine_tune(cfg, name: str = "fine-tune", **extra) -> Phase:
    return Phase(name, cfg.epochs, cfg.lr, top_of(cfg, fine_tuned(cfg)), bn=cfg.bn_policy, **extra)


STRATEGIES: dict[str, Callable] = {}


def strategy(name: str):
    """Register a function `cfg -> Plan` as strategy `name` (usable as `--strategy name` once its module is
    imported)."""
    def register(fn: Callable) -> Callable:
        STRATEGIES[name] = fn
        return fn

    return register


@strategy("linear-probe")
def linear_probe(cfg) -> Plan:
    """Backbone frozen; the head is trained on features computed once (and cached on disk)."""
    return Plan("linear-probe", (_probe(cfg),))


@strategy("full")
def full(cfg) -> Plan:
    """Every parameter trains at one rate from the start."""
    return Plan("full", (_fine_tune(cfg, "full"),))


@strategy("partial")
def partial(cfg) -> Plan:
    """Only the last k blocks of the backbone and the head train; earlier blocks keep their BN statistics."""
    return Plan("partial", (Phase("partial", cfg.epochs, cfg.lr, last_blocks(cfg.partial_blocks), bn=cfg.bn_policy),),
                {"partial_blocks": cfg.partial_blocks})


@strategy("lp-ft")
def lp_ft(cfg) -> Plan:
    """Linear probe, then full fine-tuning from that head (Kumar et al., ICLR 2022): a trained head keeps the first
    fine-tuning steps from distorting the pretrained features."""
    return Plan("lp-ft", (_probe(cfg), _fine_tune(cfg)))


@strategy("layer-decay")
def layer_decay(cfg) -> Plan:
    """Everything trains, lower layers at geometrically smaller rates: general features move least."""
    return Plan("layer-decay", (_fine_tune(cfg, "layer-decay", lr_scales=decayed_rates(cfg.layer_decay)),),
                {"layer_decay": cfg.layer_decay})


@strategy("gradual-unfreeze")
def gradual_unfreeze(cfg) -> Plan:
    """ULMFiT (Howard & Ruder, ACL 2018): the head alone first, then one more block group per epoch from the top,
    each group at 1/factor of the rate of the group above it."""
    phase = Phase("gradual-unfreeze", cfg.epochs, cfg.lr, fine_tuned(cfg), bn=cfg.bn_policy,
                  lr_scales=discriminative_rates(cfg.unfreeze_factor), hooks=(UnfreezeFromTop(),))
    return Plan("gradual-unfreeze", (phase,), {"unfreeze_factor": cfg.unfreeze_factor})


@strategy("l2-sp")
def l2_sp(cfg) -> Plan:
    """Full fine-tuning pulled towards the source weights instead of towards zero."""
    penalty = L2SPGradient(cfg.l2sp_alpha, cfg.l2sp_beta)
    return Plan("l2-sp", (_fine_tune(cfg, "l2-sp", weight_decay=0.0, hooks=(penalty,)),),
                {"l2sp_alpha": cfg.l2sp_alpha, "l2sp_beta": cfg.l2sp_beta})


@strategy("bitfit")
def bitfit(cfg) -> Plan:
    """Only the biases and the new head train (Ben Zaken et al., ACL 2022): ~0.1-1% of the parameters."""
    select = lambda model: biases(model) | head_only(model)  # noqa: E731
    return Plan("bitfit", (Phase("bitfit", cfg.epochs, cfg.peft_lr, select, bn=cfg.bn_policy),))


@strategy("lora")
def lora(cfg) -> Plan:
    """LoRA adapters (through PEFT) on the backbone's linear and ungrouped conv layers, after a linear probe; the
    base weights stay frozen, the adapters and the head train."""
    options = {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout}
    select = lambda model: adapters(model) | head_only(model)  # noqa: E731
    phase = Phase("lora", cfg.epochs, cfg.peft_lr, select, bn=cfg.bn_policy,
                  hooks=(LoRAAdapters(options, cfg.merge),))
    return Plan("lora", (_probe(cfg), phase), {"lora": options})


@strategy("wise-ft")
def wise_ft(cfg) -> Plan:
    """LP-FT, then WiSE-FT (Wortsman et al., CVPR 2022): theta = (1-a) theta_lp + a theta_ft, with `a` chosen
    on the validation split; keeps the probe's robustness where fine-tuning overfits."""
    return Plan("wise-ft", (_probe(cfg), _fine_tune(cfg)), hooks=(WiseFTInterpolation(),))


def interpolate(theta0: dict, theta1: dict, a: float) -> dict:
    """(1-a) theta0 + a theta1 for floating tensors; integer buffers (BN step counters) come from theta1."""
    return {k: torch.lerp(theta0[k], v, a) if v.is_floating_point() else v for k, v in theta1.items()}


DEFAULT_STRATEGY = "lp-ft"


def make_plan(name: str, cfg) -> Plan:
    if name not in STRATEGIES:
        raise XferError(f"Unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}.")
    if cfg.bn_policy not in BN_POLICIES:
        raise XferError(f"--bn-policy must be one of {', '.join(BN_POLICIES)}, got {cfg.bn_policy!r}.")
    return STRATEGIES[name](cfg)
