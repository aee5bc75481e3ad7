"""The fused EMA callback averages like Lightning's own, with one multi-tensor op per update and
no host syncs, and resumes from its checkpoints."""
import collections

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from torch.utils._python_dispatch import TorchDispatchMode

from tresnet_ft.training.ema import FusedEMAWeightAveraging
from benchmarks.host_syncs import HostSyncCounter


class NormedBoringModel(BoringModel):
    """BoringModel with a conv and a batch norm, so buffers (float and integer) are averaged
    too, on fixed data; it records the weight that each validation epoch sees."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Sequential(torch.nn.Unflatten(1, (2, 4, 4)), torch.nn.Conv2d(2, 4, 3, padding=1),
                                         torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(64, 2))
        self.validated_weights = []

    def train_dataloader(self):
        inputs = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
        return torch.utils.data.DataLoader(inputs, batch_size=4)

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.validated_weights.append(self.layer[1].weight.detach().clone())
        return super().validation_step(batch, batch_idx)


def _fit_with(callback, tmp_path, max_epochs=2, ckpt_path=None, checkpoint=None, limit_val_batches=1):
    pl.seed_everything(0)
    model = NormedBoringModel()
    callbacks = [callback] + ([checkpoint] if checkpoint else [])
    trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=max_epochs, limit_train_batches=6,
                         limit_val_batches=limit_val_batches, callbacks=callbacks, logger=False,
                         enable_checkpointing=checkpoint is not None, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, ckpt_path=ckpt_path)
    return model


def _assert_same_average(fused, reference, plain):
    """Floating tensors match Lightning's average; integer buffers are the model's own count
    (Lightning averages and truncates them; the fused update copies them)."""
    for name, expected in reference.state_dict().items():
        actual = fused.state_dict()[name]
        if expected.is_floating_point():
            torch.testing.assert_close(actual, expected, msg=name)
        else:
            assert torch.equal(actual, plain.state_dict()[name]), name


SCHEDULES = [{}, {"update_every_n_steps": 3, "update_starting_at_step": 4, "update_starting_at_epoch": 1}]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["every_step", "every_3rd_from_step_4_and_epoch_ends"])
def test_fused_ema_matches_lightnings_average_buffers_and_validation(tmp_path, schedule):
    reference = _fit_with(EMAWeightAveraging(decay=0.8, **schedule), tmp_path / "reference")
    fused = _fit_with(FusedEMAWeightAveraging(decay=0.8, **schedule), tmp_path / "fused")
    plain = _fit_with(pl.Callback(), tmp_path / "plain")
    _assert_same_average(fused, reference, plain)
    # validation saw the same averaged weights, and they are not simply the last ones
    assert len(fused.validated_weights) == len(reference.validated_weights) == 3  # sanity check + 2 epochs
    for actual, expected in zip(fused.validated_weights, reference.validated_weights):
        torch.testing.assert_close(actual, expected)
    assert not torch.allclose(plain.layer[1].weight, fused.layer[1].weight)


def _recording(callback_cls):
    """A subclass of ``callback_cls`` that counts host syncs and dispatched ops in its updates."""

    class Recording(callback_cls):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.syncs, self.ops = [], []

        def on_train_batch_end(self, *args):
            with HostSyncCounter() as syncs, _OpRecorder() as ops:
                super().on_train_batch_end(*args)
            self.syncs.append(syncs.total)
            self.ops.append(ops.counts)

    return Recording


class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_fused_ema_update_makes_no_host_syncs_and_one_multi_tensor_op(tmp_path):
    lightnings = _recording(EMAWeightAveraging)(decay=0.8)
    _fit_with(lightnings, tmp_path / "lightning", max_epochs=1, limit_val_batches=0)
    fused = _recording(FusedEMAWeightAveraging)(decay=0.8)
    _fit_with(fused, tmp_path / "fused", max_epochs=1, limit_val_batches=0)
    # Lightning's update reads n_averaged twice: bool(n_averaged == 0) and n_averaged > 0
    assert lightnings.syncs == [2] * 6
    assert fused.syncs == [0] * 6
    # the first update copies everything; later ones blend floats and copy num_batches_tracked
    assert fused.ops[0]["_foreach_copy_"] == 2 and "_foreach_lerp_" not in fused.ops[0]
    for ops in fused.ops[1:]:
        foreach_ops = {name: n for name, n in ops.items() if name.startswith("_foreach")}
        assert foreach_ops == {"_foreach_lerp_": 1, "_foreach_copy_": 1}
        assert set(ops) - set(foreach_ops) <= {"detach", "add_"}  # add_: n_averaged += 1


def test_fused_ema_resumes_from_its_checkpoint(tmp_path):
    uninterrupted = _fit_with(FusedEMAWeightAveraging(decay=0.8), tmp_path / "whole", limit_val_batches=0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_top_k=-1)
    _fit_with(FusedEMAWeightAveraging(decay=0.8), tmp_path / "first", max_epochs=1, checkpoint=checkpoint,
              limit_val_batches=0)
    saved = torch.load(checkpoint.best_model_path, weights_only=False)
    assert int(saved["averaging_state"]["n_averaged"]) == 6
    resumed_callback = FusedEMAWeightAveraging(decay=0.8)
    resumed = _fit_with(resumed_callback, tmp_path / "resumed", ckpt_path=checkpoint.best_model_path,
                        limit_val_batches=0)
    # the host's count came back with n_averaged, so the first update after resuming blended
    assert resumed_callback._updates_made == int(resumed_callback._average_model.n_averaged) == 12
    for name, expected in uninterrupted.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], expected, msg=name)
