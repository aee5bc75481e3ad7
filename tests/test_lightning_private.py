"""Lightning internals we rely on (tresnet_ft/lightning_private.py): these fail loudly when a
Lightning release changes them, instead of a feature silently stopping to work."""
import inspect

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy

from tresnet_ft.training.lightning_private import search_unused_parameters


def test_ddp_strategy_passes_its_kwargs_to_distributed_data_parallel():
    source = inspect.getsource(DDPStrategy._setup_model)
    assert "DistributedDataParallel(" in source and "**self._ddp_kwargs" in source


def test_search_unused_parameters_turns_the_flag_on_for_ddp_only():
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters") in (None, False)
    assert search_unused_parameters(trainer)
    assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is True
    single = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    assert not search_unused_parameters(single)
