"""Fine-tuning strategies. Each is one small function from the config to a Plan: which parameters train, at which
rates, in which phases. The training loop runs any Plan; adding a strategy means adding one function here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from xfer.errors import XferError
from xfer.models import TransferModel, block_groups

Selector = Callable[[TransferModel], set[str]]


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    lr: float
    trainable: Selector  # names of the parameters that train in this phase; all others are frozen
    cached_features: bool = False  # head-only phase: train on backbone features computed once and cached
    bn: str = "frozen"  # BatchNorm statistics of frozen parts: "frozen" (eval mode) or "train"


@dataclass(frozen=True)
class Plan:
    strategy: str
    phases: tuple[Phase, ...]
    options: dict = field(default_factory=dict)

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


def last_blocks(k: int) -> Selector:
    def select(model: TransferModel) -> set[str]:
        groups = block_groups(model)
        if not 1 <= k <= len(groups):
            raise XferError(f"partial: --partial-blocks must be between 1 and {len(groups)} for this model, got {k}.")
        return head_only(model) | {n for g in groups[-k:] for n in g}

    return select


def _probe(cfg) -> Phase:
    return Phase("linear-probe", cfg.lp_epochs, cfg.lp_lr, head_only, cached_features=True)


def linear_probe(cfg) -> Plan:
    """Backbone frozen; the head is trained on features computed once (and cached on disk)."""
    return Plan("linear-probe", (_probe(cfg),))


def full(cfg) -> Plan:
    """Every parameter trains at one rate from the start."""
    return Plan("full", (Phase("full", cfg.epochs, cfg.lr, fine_tuned(cfg), bn="train"),))


def partial(cfg) -> Plan:
    """Only the last k blocks of the backbone and the head train; earlier blocks keep their BN statistics."""
    return Plan("partial", (Phase("partial", cfg.epochs, cfg.lr, last_blocks(cfg.partial_blocks)),),
                {"partial_blocks": cfg.partial_blocks})


def lp_ft(cfg) -> Plan:
    """Linear probe, then full fine-tuning from that head (Kumar et al., ICLR 2022): a trained head keeps the first
    fine-tuning steps from distorting the pretrained features."""
    return Plan("lp-ft", (_probe(cfg), Phase("fine-tune", cfg.epochs, cfg.lr, fine_tuned(cfg), bn="train")))


STRATEGIES: dict[str, Callable] = {
    "linear-probe": linear_probe,
    "full": full,
    "partial": partial,
    "lp-ft": lp_ft,
}
DEFAULT_STRATEGY = "lp-ft"


def make_plan(name: str, cfg) -> Plan:
    if name not in STRATEGIES:
        raise XferError(f"Unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}.")
    return STRATEGIES[name](cfg)
