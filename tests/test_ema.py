"""The fused EMA callback averages exactly like Lightning's own, with the multi-tensor kernel."""
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset

from tresnet_ft.ema import FusedEMAWeightAveraging


class NormedBoringModel(BoringModel):
    """BoringModel plus a batch norm, so buffers are averaged too."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Sequential(torch.nn.Linear(32, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))

    def train_dataloader(self):
        return torch.utils.data.DataLoader(RandomDataset(32, 64), batch_size=4)


def _fit_with(callback, tmp_path):
    pl.seed_everything(0)
    model = NormedBoringModel()
    trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=2, limit_train_batches=6,
                         limit_val_batches=1, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model)
    return model


def test_fused_ema_matches_lightnings_and_uses_the_multi_tensor_update(tmp_path):
    reference = _fit_with(EMAWeightAveraging(decay=0.8), tmp_path / "reference")
    fused_callback = FusedEMAWeightAveraging(decay=0.8)
    fused = _fit_with(fused_callback, tmp_path / "fused")
    assert fused_callback._average_model.multi_avg_fn is not None
    assert fused_callback._average_model.avg_fn is None
    for (name, expected), actual in zip(reference.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(actual, expected, msg=name)
    # and the averaged weights are not simply the last ones: decay 0.8 over 12 steps leaves a trace
    plain = _fit_with(pl.Callback(), tmp_path / "plain")
    assert not torch.allclose(plain.layer[0].weight, fused.layer[0].weight)
