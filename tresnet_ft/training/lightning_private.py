"""The one place that touches Lightning internals, each with a test (tests/test_lightning_private.py)
that fails loudly when a Lightning release changes them."""
from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy


def search_unused_parameters(trainer: "pl.Trainer") -> bool:
    """Make a DDP strategy that has not wrapped the model yet use ``find_unused_parameters=True``.

    Returns whether the strategy is DDP (and so was changed). Lightning offers the flag only when
    the strategy is built; a callback that freezes part of the model learns too late that it
    needs it. The DDP strategy keeps its constructor's keyword arguments in ``_ddp_kwargs`` and
    passes them to ``DistributedDataParallel`` in ``strategy.setup``.
    """
    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy):
        return False
    strategy._ddp_kwargs["find_unused_parameters"] = True
    return True
