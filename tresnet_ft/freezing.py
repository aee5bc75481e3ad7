"""Freeze the backbone for the first epochs of fine-tuning, then train everything."""
from __future__ import annotations

import logging

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class BackboneFreeze(Callback):
    """Train only the head for ``freeze_epochs`` epochs, then unfreeze the backbone.

    Freezing runs the backbone without autograd (no activations kept, no gradients), so its
    parameters get no gradient and every optimizer skips them, weight decay included. They stay
    in the optimizer and the learning-rate schedule runs unchanged across the switch: the
    backbone simply starts following it at ``freeze_epochs``.

    Args:
        freeze_epochs: epochs with a frozen backbone (0 disables freezing).
        freeze_norm_stats: while frozen, also keep the backbone's norm statistics fixed (eval
            mode), as the pretrained network computed them.

    The module needs a ``backbone_frozen`` attribute that its forward honours and a ``model``
    with a ``body``.
    """

    def __init__(self, freeze_epochs: int = 0, freeze_norm_stats: bool = True) -> None:
        if freeze_epochs < 0:
            raise ValueError(f"Expected freeze_epochs >= 0, but got {freeze_epochs}.")
        self.freeze_epochs = freeze_epochs
        self.freeze_norm_stats = freeze_norm_stats

    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        frozen = trainer.current_epoch < self.freeze_epochs
        if frozen != pl_module.backbone_frozen:
            log.info("Epoch %d: backbone %s.", trainer.current_epoch, "frozen" if frozen else "unfrozen")
        pl_module.backbone_frozen = frozen
        # Lightning puts the module in train mode at each epoch start; undo it for the backbone.
        if frozen and self.freeze_norm_stats:
            pl_module.model.body.eval()

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        pl_module.backbone_frozen = False
