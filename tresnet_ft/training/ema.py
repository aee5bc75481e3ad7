"""Lightning's EMA of weights, updated by one multi-tensor op per step and without host syncs.

Lightning's ``EMAWeightAveraging`` updates through ``AveragedModel.update_parameters``, which
(a) calls the averaging function once per tensor (~500 for TResNet-M: 7 % of a quickstart step
on 2 CPU cores) and (b) reads ``n_averaged`` on the host twice per update
(``bool(n_averaged == 0)`` and ``n_averaged > 0``). On a GPU each read waits for every queued
kernel, so the CPU stops running ahead of the GPU once per step.

:class:`FusedEMAWeightAveraging` keeps Lightning's schedule, checkpoint format and validation
swap, and replaces only the update:

- the host counts its own updates, so the first one (a copy, as in ``AveragedModel``) is chosen
  without reading ``n_averaged``; ``n_averaged`` is still incremented on the device, so
  checkpoints hold the same value as Lightning's;
- floating parameters and buffers are averaged by one ``torch._foreach_lerp_``, integer buffers
  (``num_batches_tracked``) are copied by one ``torch._foreach_copy_`` (one of each per device
  and dtype, should a model mix them, since the fast kernels need one of each).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from .lightning_private import EMAWeightAveragingWithHooks


class FusedEMAWeightAveraging(EMAWeightAveragingWithHooks):
    """:class:`~lightning.pytorch.callbacks.EMAWeightAveraging` whose update makes no host syncs
    and runs one multi-tensor op over all parameters and buffers.

    Same arguments, schedule (``update_every_n_steps``, ``update_starting_at_step``,
    ``update_starting_at_epoch``), checkpoint keys and validation behaviour as Lightning's
    callback. The averages of floating tensors equal Lightning's (to float rounding); integer
    buffers are copied from the model instead of being averaged and truncated, which is what
    ``AveragedModel`` does with buffers it does not average.

    With ``device`` set to another device than the model's, each update copies the model there,
    which is a sync on its own.

    Example::

        trainer = pl.Trainer(callbacks=[FusedEMAWeightAveraging(decay=0.999)])
    """

    def __init__(self, decay: float = 0.999, **kwargs: Any) -> None:
        super().__init__(decay=decay, **kwargs)
        self.decay = decay
        # Lightning passes ``avg_fn`` to ``AveragedModel``; give it the multi-tensor form, so a
        # direct ``average_model.update_parameters`` call still averages the same way.
        averaging_kwargs = self.averaging_kwargs
        averaging_kwargs.pop("avg_fn", None)
        averaging_kwargs["multi_avg_fn"] = get_ema_multi_avg_fn(decay)
        # The number of updates of the current ``average_model``, kept on the host: it mirrors
        # the device's ``n_averaged`` so that nothing has to read that one per step.
        self._updates_made = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":  # Lightning built a fresh AveragedModel, with n_averaged == 0
            self._updates_made = 0
        else:
            # validate/test after fit, on the same Trainer: the module already holds the averaged
            # weights (or those of --ckpt_path, e.g. best.ckpt, which has no average of its own);
            # Lightning would swap the fit's final average in at validation and score that instead.
            self.average_model = None

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self.average_model is None:  # not fitting: the weights are used as saved, nothing to restore
            return
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        self._updates_made = int(self.average_model.n_averaged)  # one read per resume, not per step

    # Lightning's update hooks (copied in the adapter, schedule and bookkeeping unchanged) call
    # this instead of ``AveragedModel.update_parameters``, which syncs and runs per tensor.
    @torch.no_grad()
    def update_average(self, pl_module: pl.LightningModule) -> None:
        """Update the average from ``pl_module`` as ``AveragedModel.update_parameters`` does with
        an EMA, without reading device values on the host."""
        average = self.average_model
        assert average is not None
        first = self._updates_made == 0  # the first update takes the weights as they are
        for (_, _, blend), (avg_tensors, model_tensors) in _group_tensors(average.module, pl_module,
                                                                          average.use_buffers).items():
            if blend and not first:
                torch._foreach_lerp_(avg_tensors, model_tensors, 1.0 - self.decay)
            else:
                torch._foreach_copy_(avg_tensors, model_tensors)
        average.n_averaged += 1
        self._updates_made += 1


def averaged_state_dict(trainer: pl.Trainer, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` (the module's) as the run's weight-averaging callback saves it: the averaged
    weights when a :class:`~lightning.pytorch.callbacks.WeightAveraging` callback keeps an average,
    else ``state_dict`` unchanged.

    Lightning calls callbacks' ``on_save_checkpoint`` only for full checkpoints, so a weights-only
    file would otherwise hold the raw weights, not the averaged ones that validation scored. This
    asks the callback's own hook to do the swap, on a scratch checkpoint holding only the weights.
    """
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, WeightAveraging):
            scratch = {"state_dict": state_dict}
            callback.on_save_checkpoint(trainer, trainer.lightning_module, scratch)
            return scratch["state_dict"]
    return state_dict


def _group_tensors(average: torch.nn.Module, model: torch.nn.Module, use_buffers: bool
                   ) -> dict[tuple[torch.device, torch.dtype, bool], tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Pair the average's tensors with the model's, grouped by (device, dtype, blend) so that each
    group is one fast multi-tensor kernel: one group to blend and one to copy for a float32 model
    with BatchNorm on one device.

    ``blend`` is True for floating parameters, and floating buffers when ``use_buffers``; the rest
    (integer tensors such as ``num_batches_tracked``, and all buffers without ``use_buffers``) are
    copied. The lists are rebuilt per update: moving a module to a device replaces its buffers.
    """
    groups: dict = defaultdict(lambda: ([], []))
    pairs = [(a, m, True) for a, m in zip(average.parameters(), model.parameters(), strict=True)]
    pairs += [(a, m, use_buffers) for a, m in zip(average.buffers(), model.buffers(), strict=True)]
    for avg, current, may_blend in pairs:
        blend = may_blend and (avg.is_floating_point() or avg.is_complex())
        group = groups[(avg.device, avg.dtype, blend)]
        group[0].append(avg.detach())
        group[1].append(current.detach().to(avg.device))
    return groups
