"""Defaults that depend on the machine: precision, cudnn.benchmark, loader workers, pinned memory.

The GPU cases run on a CPU machine with ``torch.cuda`` answers monkeypatched.
"""
import types

import pytest
import torch
import yaml

from tresnet_ft.cli.command import training_args
from tresnet_ft.data import ImageDataModule
from tresnet_ft.data import workers
from tresnet_ft.data.workers import workers_per_process
from tresnet_ft.cli.lightning_cli import run_cli
from tresnet_ft.cli.recipe import cuda_supports_bf16, load_recipe, resolve_precision, resolve_trainer_settings

NO_GPU_HERE = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts what a machine without CUDA gets")


def _probe(answer: bool, calls: list[str], name: str):
    def probe() -> bool:
        calls.append(name)
        return answer

    return probe


# -- precision ------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision, accelerator, cuda, bf16, expected, reason", [
    ("auto", "auto", True, True, "bf16-mixed", "CUDA device supports bf16"),
    ("auto", "gpu", True, True, "bf16-mixed", "CUDA device supports bf16"),
    ("auto", "cuda", True, False, "16-mixed", "CUDA device without native bf16"),
    ("auto", "auto", False, True, "32-true", "no CUDA device"),
    ("auto", "cpu", True, True, "32-true", "accelerator cpu"),
    (None, "auto", True, True, "bf16-mixed", "CUDA device supports bf16"),
    ("16-mixed", "auto", True, True, "16-mixed", "as configured"),
    ("bf16-mixed", "cpu", False, False, "bf16-mixed", "as configured"),
])
def test_resolve_precision(precision, accelerator, cuda, bf16, expected, reason):
    calls: list[str] = []
    got = resolve_precision(precision, accelerator, cuda_available=_probe(cuda, calls, "cuda"),
                            cuda_bf16=_probe(bf16, calls, "bf16"))
    assert got == (expected, reason)
    # The bf16 probe (a child process on a GPU box) runs only when its answer decides.
    assert calls == {"as configured": [], "accelerator cpu": [], "no CUDA device": ["cuda"]}.get(reason, ["cuda", "bf16"])


def _fake_cuda(monkeypatch, available: bool, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # ask in-process, not in a child
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)


def _trainer_config(argv: list[str]) -> tuple[dict, list[str]]:
    """The merged recipe's trainer section that LightningCLI reads, and the flags after it."""
    args, _ = training_args(argv)
    assert args[1] == "--config"
    with open(args[2]) as handle:
        return yaml.safe_load(handle)["trainer"], args[3:]


@pytest.mark.parametrize("available, bf16, expected", [(True, True, "bf16-mixed"), (True, False, "16-mixed"),
                                                        (False, False, "32-true")])
def test_recipe_precision_follows_the_device(monkeypatch, tmp_path, caplog, available, bf16, expected):
    monkeypatch.chdir(tmp_path)
    _fake_cuda(monkeypatch, available, bf16)
    caplog.set_level("INFO", logger="tresnet_ft")
    for recipe in ("cifar100", "folder", "multilabel", "quickstart"):
        trainer, flags = _trainer_config(["fit", "--recipe", recipe])
        assert trainer["precision"] == expected, recipe
        assert not any(flag.startswith("--trainer.precision") for flag in flags)
    reason = {"bf16-mixed": "CUDA device supports bf16", "16-mixed": "CUDA device without native bf16",
              "32-true": "no CUDA device"}[expected]
    assert f"precision: {expected} ({reason})" in caplog.messages


def test_explicit_precision_wins_on_a_gpu_box(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _fake_cuda(monkeypatch, True, True)
    trainer, flags = _trainer_config(["fit", "--recipe", "cifar100", "--trainer.precision", "32-true",
                                      "--model.lr", "0.1"])
    assert trainer["precision"] == "32-true"
    # After every flag of the user's and every other precision setting, so it wins (only the resolved
    # default_root_dir may follow it: tests/test_runs_location.py).
    assert _last_precision_flag(flags) == "--trainer.precision=32-true" and "--model.lr" in flags
    # `auto` on the command line is resolved too: Lightning would refuse the word.
    trainer, flags = _trainer_config(["fit", "--recipe", "quickstart", "--trainer.precision=auto"])
    assert trainer["precision"] == "bf16-mixed" and _last_precision_flag(flags) == "--trainer.precision=bf16-mixed"


def _last_precision_flag(flags: list[str]) -> str:
    """The last flag that sets anything but default_root_dir, checked to be a precision flag's last word."""
    rest = [flag for flag in flags if not flag.startswith("--trainer.default_root_dir=")]
    assert sum(flag.startswith("--trainer.precision") for flag in rest) == 1, rest
    return rest[-1]


def test_cpu_accelerator_on_a_gpu_box_trains_in_float32(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _fake_cuda(monkeypatch, True, True)
    trainer, _ = _trainer_config(["fit", "--recipe", "cifar100", "--trainer.accelerator", "cpu"])
    assert trainer["precision"] == "32-true"
    extra = tmp_path / "cpu.yaml"  # the same choice from an extra config file
    extra.write_text("trainer:\n  accelerator: cpu\n")
    trainer, _ = _trainer_config(["fit", "--recipe", "cifar100", "--config", str(extra)])
    assert trainer["precision"] == "32-true"


@NO_GPU_HERE
@pytest.mark.parametrize("recipe", ["cifar100", "folder", "quickstart", "multilabel", "stanford_cars-448"])
def test_recipes_on_this_cpu_machine_train_in_float32_with_benchmark_on(tmp_path, monkeypatch, recipe):
    monkeypatch.chdir(tmp_path)
    assert load_recipe(recipe).config["trainer"]["precision"] == "auto"
    trainer, _ = _trainer_config(["fit", "--recipe", recipe])
    assert trainer["precision"] == "32-true" and trainer["benchmark"] is True


@NO_GPU_HERE
def test_bf16_probe_answers_no_without_cuda():
    assert torch.cuda.is_initialized() is False
    assert cuda_supports_bf16() is False  # asked in a child process


@NO_GPU_HERE
def test_quickstart_trainer_is_built_in_float32_with_the_resolved_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored after
    args, _ = training_args(["fit", "--recipe", "quickstart", "--logger", "csv",
                             "--data.dataset_options", '{"num_images": 8}'])
    cli = run_cli(args, "quickstart", run=False)
    assert cli.trainer.precision == "32-true"
    assert cli.config["trainer"]["precision"] == "32-true"  # what config.yaml is written from
    assert cli.config["trainer"]["benchmark"] is True and torch.backends.cudnn.benchmark is True


# -- cudnn.benchmark and deterministic -------------------------------------------------------------

def test_deterministic_turns_the_recipe_benchmark_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer, _ = _trainer_config(["fit", "--recipe", "folder", "--trainer.deterministic", "true"])
    assert trainer["benchmark"] is False
    trainer, _ = _trainer_config(["fit", "--recipe", "folder", "--trainer.deterministic=warn"])
    assert trainer["benchmark"] is False
    trainer, _ = _trainer_config(["fit", "--recipe", "folder", "--trainer.deterministic", "false"])
    assert trainer["benchmark"] is True


def test_benchmark_the_user_chose_is_kept():
    values, notes = resolve_trainer_settings({"precision": "32-true", "benchmark": True},
                                             {"deterministic": True, "benchmark": True})
    assert values == {"precision": "32-true"} and notes == ["precision: 32-true (as configured)"]
    values, notes = resolve_trainer_settings({"precision": "32-true", "benchmark": True, "deterministic": True}, {})
    assert values["benchmark"] is False and "cudnn.benchmark: off (deterministic was asked for)" in notes


@NO_GPU_HERE
def test_deterministic_run_builds_without_the_benchmark_clash(tmp_path, monkeypatch, recwarn):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda *a, **k: None)  # no global switch in tests
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # Lightning sets it; restored after
    args, _ = training_args(["fit", "--recipe", "quickstart", "--logger", "csv", "--trainer.deterministic", "true",
                             "--data.dataset_options", '{"num_images": 8}'])
    run_cli(args, "quickstart", run=False)
    assert torch.backends.cudnn.benchmark is False
    assert not [w for w in recwarn if "benchmark=True" in str(w.message)]


# -- loader workers and pinned memory ------------------------------------------------------------

@pytest.mark.parametrize("cores, processes, expected", [
    (2, 1, 1), (2, 2, 1), (2, 8, 1),
    (16, 1, 8), (16, 2, 7), (16, 8, 1),
    (64, 1, 8), (64, 2, 8), (64, 8, 7),
])
def test_workers_per_process_shares_the_cores(cores, processes, expected):
    assert workers_per_process(cores, processes) == expected
    assert processes * expected <= max(cores, processes)  # never more workers than cores, beyond one each


def test_workers_per_process_rejects_nonsense():
    with pytest.raises(ValueError, match="cores=0, processes=1"):
        workers_per_process(0, 1)
    with pytest.raises(ValueError, match="processes=0"):
        workers_per_process(4, 0)


def _fake_trainer(device: str, num_devices: int = 1):
    return types.SimpleNamespace(num_devices=num_devices,
                                 strategy=types.SimpleNamespace(root_device=torch.device(device)))


def test_automatic_workers_divide_the_node_among_its_devices(monkeypatch):
    monkeypatch.setattr(workers, "usable_cores", lambda: 64)
    dm = ImageDataModule("quickstart")
    assert dm.num_workers == 8  # no trainer yet: one process
    dm.trainer = _fake_trainer("cuda", num_devices=8)
    assert dm.num_workers == 7
    explicit = ImageDataModule("quickstart", num_workers=3)
    explicit.trainer = _fake_trainer("cuda", num_devices=8)
    assert explicit.num_workers == 3
    with pytest.raises(ValueError, match="num_workers .* but got -1"):
        ImageDataModule("quickstart", num_workers=-1)


def test_loaders_pin_memory_when_training_on_a_gpu():
    dm = ImageDataModule("quickstart", image_size=32, batch_size=4, num_workers=0,
                         dataset_options={"num_images": 8})
    dm.trainer = _fake_trainer("cuda", num_devices=1)
    assert dm.train_dataloader().pin_memory is True and dm.val_dataloader().pin_memory is True
    dm.trainer = _fake_trainer("cpu")
    assert dm.train_dataloader().pin_memory is False
    off = ImageDataModule("quickstart", image_size=32, num_workers=0, pin_memory=False,
                          dataset_options={"num_images": 8})
    off.trainer = _fake_trainer("cuda")
    assert off.train_dataloader().pin_memory is False
