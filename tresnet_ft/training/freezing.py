"""Freeze the backbone for the first epochs of fine-tuning, then train everything."""
from __future__ import annotations

import logging
from typing import Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from .lightning_private import search_unused_parameters
from ..errors import InvalidValueError

log = logging.getLogger(__name__)


def freezing_callbacks(freeze_epochs: int, freeze_norm_stats: bool, pretrained: bool) -> list[Callback]:
    """``[BackboneFreeze(...)]`` when a run should freeze its backbone, else ``[]``.

    Freezing protects pretrained features from the new head's first, large gradients. A randomly
    initialised backbone has nothing to protect: freezing it would only train a head on random
    features for ``freeze_epochs`` epochs, so it is skipped, with one log line.
    """
    if not freeze_epochs:
        return []
    if not pretrained:
        if rank_zero_only.rank == 0:  # one line, not one per DDP process
            log.info("freeze_epochs=%d ignored: the backbone is not pretrained (pretrained=null), so there is "
                     "nothing to protect.", freeze_epochs)
        return []
    return [BackboneFreeze(freeze_epochs, freeze_norm_stats)]


class BackboneFreeze(Callback):
    """Train only the head for ``freeze_epochs`` epochs, then unfreeze the backbone.

    This callback owns freezing. A frozen backbone's parameters stop requiring gradients, so
    autograd keeps no activations for it and every optimizer skips it (weight decay included).
    The parameters stay in the optimizer and the learning-rate schedule runs unchanged across
    the switch: the backbone simply starts following it at ``freeze_epochs``.

    Under DDP the frozen parameters get no gradient, which DDP's default
    (``find_unused_parameters=False``) reports as an error at the second step; this callback
    turns the search for unused parameters on, for runs that freeze only.

    Args:
        freeze_epochs: epochs with a frozen backbone (0 disables freezing).
        freeze_norm_stats: while frozen, also keep the backbone's norm statistics fixed (eval
            mode), as the pretrained network computed them.

    The module needs a ``model`` whose ``body`` is the backbone (TResNet's layout).
    """

    def __init__(self, freeze_epochs: int = 0, freeze_norm_stats: bool = True) -> None:
        if freeze_epochs < 0:
            raise InvalidValueError(f"Expected freeze_epochs >= 0, but got {freeze_epochs}.")
        self.freeze_epochs = freeze_epochs
        self.freeze_norm_stats = freeze_norm_stats
        self._frozen: Optional[bool] = None

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        # Before the strategy wraps the model in DistributedDataParallel.
        if stage == "fit" and self.freeze_epochs and search_unused_parameters(trainer):
            log.debug("DDP searches for unused parameters: the backbone is frozen for %d epoch(s).",
                      self.freeze_epochs)

    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        frozen = trainer.current_epoch < self.freeze_epochs
        if frozen != self._frozen:
            if self._frozen is not None or frozen:
                log.info("Epoch %d: backbone %s.", trainer.current_epoch, "frozen" if frozen else "unfrozen")
            pl_module.model.body.requires_grad_(not frozen)
            self._frozen = frozen
        # Lightning puts the module in train mode at each epoch start; undo it for the backbone.
        if frozen and self.freeze_norm_stats:
            pl_module.model.body.eval()

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        pl_module.model.body.requires_grad_(True)
        self._frozen = None
