"""best.ckpt holds the evaluated (EMA) weights and the metadata, a quarter of last.ckpt's size;
last.ckpt keeps the full training state for resuming.

One tiny TResNet-M run with AdamW and EMA, two epochs, whose validation metric never improves:
best.ckpt is the first epoch's and last.ckpt the second's, so the two cannot be confused.
"""
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.test_module import _NeverImproves, tiny_data, tiny_trainer
from tresnet_ft import create_model
from tresnet_ft.classifier.checkpoint import METADATA_KEY, load_classifier

TRAINING_STATE = ("optimizer_states", "lr_schedulers", "callbacks", "current_model_state", "averaging_state")


class EvaluatedWeights(Callback):
    """The weights each validation epoch scores (EMA-swapped in by then), its val/loss, and the
    raw training weights at the end of each training epoch."""

    def __init__(self):
        self.evaluated, self.val_loss, self.raw = [], [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and not trainer.sanity_checking:
            self.evaluated.append({k: v.clone() for k, v in pl_module.state_dict().items()})

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_loss.append(float(trainer.callback_metrics["val/loss"]))

    def on_train_epoch_end(self, trainer, pl_module):
        self.raw.append({k: v.clone() for k, v in pl_module.state_dict().items()})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ema_run")
    pl.seed_everything(0)
    data = tiny_data()
    model = _NeverImproves.from_datamodule(data, arch="tresnet_m", pretrained=None, optimizer="adamw",
                                           ema_decay=0.5, lr=5e-3, plots=False)
    recorder = EvaluatedWeights()
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[recorder])
    trainer.fit(model, data)
    folder = tmp_path / "logs" / "version_0" / "checkpoints"
    return trainer, model, data, recorder, folder / "best.ckpt", folder / "last.ckpt"


def _assert_same_state(got, expected):
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_best_holds_the_evaluated_ema_weights_and_metadata_only(run):
    trainer, _, _, recorder, best_path, last_path = run
    best, last = (torch.load(p, weights_only=True) for p in (best_path, last_path))
    assert best["global_step"] == 2 and last["global_step"] == 4  # the first epoch stayed best
    assert not set(TRAINING_STATE) & set(best) and set(TRAINING_STATE) <= set(last)
    assert best[METADATA_KEY]["classes"] == ["circle", "square", "triangle", "cross", "diamond"]
    assert best["hyper_parameters"]["ema_decay"] == 0.5
    _assert_same_state(best["state_dict"], recorder.evaluated[0])  # what the first validation scored
    _assert_same_state(last["state_dict"], recorder.evaluated[1])
    _assert_same_state(last["current_model_state"], recorder.raw[1])
    # the average, not the raw weights of that moment
    assert not torch.equal(best["state_dict"]["model.head.fc.weight"], recorder.raw[0]["model.head.fc.weight"])


def test_best_is_at_most_a_third_of_last(run):
    *_, best_path, last_path = run
    ratio = best_path.stat().st_size / last_path.stat().st_size
    assert ratio <= 0.35, ratio  # ~0.25: weights vs weights, raw weights and AdamW's two moments


def test_best_loads_for_prediction_and_as_pretrained_weights(run):
    *_, recorder, best_path, _ = run
    evaluated = {k[len("model."):]: v for k, v in recorder.evaluated[0].items() if k.startswith("model.")}
    loaded = load_classifier(best_path)
    _assert_same_state(loaded.model.state_dict(), evaluated)
    started = create_model("tresnet_m", 5, pretrained=str(best_path))
    for key, value in evaluated.items():
        torch.testing.assert_close(started.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_validate_best_scores_what_the_run_scored(run):
    trainer, model, data, recorder, _, _ = run
    result = trainer.validate(model, data, ckpt_path="best", verbose=False)[0]
    assert result["val/loss"] == pytest.approx(recorder.val_loss[0], abs=1e-6)
    assert recorder.val_loss[0] != pytest.approx(recorder.val_loss[1], abs=1e-6)  # a real choice


def test_resuming_from_best_is_one_clear_error(run, tmp_path):
    _, _, data, _, best_path, _ = run
    model = _NeverImproves.from_datamodule(data, arch="tresnet_m", pretrained=None, ema_decay=0.5, plots=False)
    with pytest.raises(ValueError, match="holds weights only .* --ckpt_path last"):
        tiny_trainer(tmp_path, max_epochs=3).fit(model, data, ckpt_path=best_path)
