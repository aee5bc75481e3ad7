"""Distributed training is Lightning's DDP: two CPU processes (gloo) train what one process trains
with twice the batch, on one machine or as two simulated nodes.

With synchronised norms (in-place ABN) and every step using the whole training set (16 images;
8 per process, or 16 in one process), the data order cannot matter, so the two runs compute the
same thing up to float rounding. Without ``--model.sync_norm`` the same comparison is far off
(conv weights differ by ~1e-2 after two steps: each process normalises with half-batch
statistics), which is what the 1e-5 tolerance below tells apart.
"""

from __future__ import annotations

import collections
import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import Callback

from tests.run_helpers import (
    DumpRankState,
    callback_arg,
    column_by_step,
    metrics_rows,
    run_command,
    start_command,
)
from tresnet_ft import create_model

COMMON = [
    "fit",
    "--recipe",
    "quickstart",
    "--logger",
    "csv",
    "--trainer.max_epochs",
    "2",
    "--data.dataset_options",
    '{"num_images": 16}',
    "--data.image_size",
    "32",
    "--data.train_crop",
    "squish",
    "--data.hflip",
    "0",  # deterministic images
    "--model.optimizer",
    "sgd",
    "--model.lr",
    "0.05",
    "--model.ema_decay",
    "null",
    "--model.plots",
    "false",
    "--model.sync_norm",
    "true",
    # TResNet's own init (the quickstart recipe starts branches at 0.2): with every branch active
    # from step 1, 60 synchronised norms summing in another order drift by up to 8e-5 after two
    # SGD steps at lr 0.05, above this test's 1e-5 tolerance; with silent branches they stay within it,
    # and so do active ones at lr 0.005 (largest difference 4e-6): rounding amplified, not a wrong sum.
    "--model.residual_init",
    "0",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.log_every_n_steps",
    "1",
]
TWO_PROCESSES = [
    "--trainer.strategy",
    "ddp",
    "--trainer.accelerator",
    "cpu",
    "--data.batch_size",
    "8",
]
EVAL_METRICS = ("val/top1", "val/macro_accuracy")


class CountEvaluationCollectives(Callback):
    """Each rank writes the collectives every evaluation's end made (gathering metrics, thresholds
    and plots alike) to ``folder/collectives<R>.json``."""

    NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast")

    def __init__(self, folder: str) -> None:
        self.folder, self.counts = folder, []

    def setup(self, trainer, pl_module, stage: str) -> None:
        finish = pl_module._finish_evaluation

        def counted(stage: str):
            counts, originals = collections.Counter(), {name: getattr(dist, name) for name in self.NAMES}
            for name, original in originals.items():
                setattr(dist, name, lambda *a, _name=name, _original=original, **k: (
                    counts.update([_name]), _original(*a, **k))[1])
            try:
                return finish(stage)
            finally:
                for name, original in originals.items():
                    setattr(dist, name, original)
                self.counts.append(dict(counts))

        pl_module._finish_evaluation = counted

    def on_fit_end(self, trainer, pl_module) -> None:
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        (Path(self.folder) / f"collectives{trainer.global_rank}.json").write_text(json.dumps(self.counts))


def _count_collectives_arg(folder) -> str:
    # By its path under the repository: pytest imports this file as ``test_ddp``, which the
    # subprocess could not import.
    return "--trainer.callbacks+=" + json.dumps({"class_path": "tests.test_ddp.CountEvaluationCollectives",
                                                 "init_args": {"folder": str(folder)}})


# The folder recipe's schedule: the head alone for the first epoch, then everything.
FREEZE = ["--model.freeze_epochs", "1"]


def _freeze_args(folder) -> list[str]:
    """FREEZE with a weights file: only a pretrained backbone is frozen (a random TResNet-M, saved)."""
    torch.manual_seed(0)
    path = folder / "pretrained.pth"
    torch.save(create_model("tresnet_m", 5).state_dict(), path)
    return [*FREEZE, "--model.pretrained", str(path)]


def _single_process_run(cwd, *extra: str):
    """The reference: one process, batch 16."""
    proc = run_command(
        [*COMMON, *extra, "--trainer.devices", "1", "--data.batch_size", "16"], cwd=cwd
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "runs" / "quickstart" / "version_0"


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    return _single_process_run(tmp_path_factory.mktemp("single"))


def _weights(run) -> dict[str, torch.Tensor]:
    return torch.load(
        run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )["state_dict"]


def _check_against_single_process(run, ranks, single_process) -> None:
    # One run folder, one checkpoint set, written once.
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]
    # Every rank ends with the same weights and buffers, synchronised norms, and the checkpoint holds them.
    dumps = [torch.load(ranks / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [d["world_size"] for d in dumps] == [2, 2] and [
        d["global_step"] for d in dumps
    ] == [2, 2]
    for key, value in dumps[0]["state_dict"].items():
        assert torch.equal(value, dumps[1]["state_dict"][key]), key
    assert all(all(d["synchronised"]) and len(d["synchronised"]) == 60 for d in dumps)
    weights, reference = _weights(run), _weights(single_process)
    for key, value in weights.items():
        assert torch.equal(value, dumps[0]["state_dict"][key]), key
        torch.testing.assert_close(value, reference[key], atol=1e-5, rtol=1e-5, msg=key)
    # The same metrics at every epoch: top-1 exactly (counts summed across processes), losses
    # up to float rounding (the training loss is the mean over both processes).
    rows, reference_rows = metrics_rows(run), metrics_rows(single_process)
    for name in EVAL_METRICS:
        assert (
            column_by_step(rows, name) == column_by_step(reference_rows, name) != {}
        ), name
    for name in ("val/loss", "train/loss_epoch"):
        got, want = column_by_step(rows, name), column_by_step(reference_rows, name)
        assert sorted(got) == sorted(want) == [0, 1], name
        assert all(abs(got[s] - want[s]) < 1e-5 for s in got), (name, got, want)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path, single_process):
    ranks = tmp_path / "ranks"
    proc = run_command(
        [
            *COMMON,
            *TWO_PROCESSES,
            "--trainer.devices",
            "2",
            callback_arg(DumpRankState, folder=str(ranks)),
            _count_collectives_arg(ranks),
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "distributed_backend=gloo" in proc.stderr
        and "Starting with 2 processes" in proc.stderr
    )
    assert proc.stderr.count("Run folder:") == 1  # reported by rank 0 only
    # Each validation (one per epoch; the recipe has no sanity check) is gathered once: one sum of
    # every count, one gather of the worst images; no collective per metric.
    for rank in (0, 1):
        counts = json.loads((ranks / f"collectives{rank}.json").read_text())
        assert counts == [{"all_reduce": 1, "all_gather": 1}] * 2, counts
    _check_against_single_process(
        tmp_path / "runs" / "quickstart" / "version_0", ranks, single_process
    )


@pytest.mark.slow
def test_ddp_with_a_frozen_backbone_trains_and_matches_one_process(tmp_path):
    """DDP's default (no search for unused parameters) fails at the second step when the
    backbone gets no gradient; the freezing callback turns the search on."""
    for name in ("single", "ddp"):
        (tmp_path / name).mkdir()
    freeze = _freeze_args(tmp_path)
    reference = _single_process_run(tmp_path / "single", *freeze)
    ranks = tmp_path / "ddp" / "ranks"
    proc = run_command(
        [*COMMON, *freeze, *TWO_PROCESSES, "--trainer.devices", "2",
         callback_arg(DumpRankState, folder=str(ranks))],
        cwd=(tmp_path / "ddp"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "ddp" / "runs" / "quickstart" / "version_0"
    _check_against_single_process(run, ranks, reference)


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


@pytest.mark.slow
def test_two_simulated_nodes_match_one_process(tmp_path, single_process):
    """Lightning's general-purpose cluster launch: the same command on every node with
    MASTER_ADDR, MASTER_PORT, NODE_RANK and WORLD_SIZE set. Each "node" runs in its own folder,
    as on machines without a shared disk: only node 0 (global rank 0) writes a run."""
    ranks, port = tmp_path / "ranks", str(_free_port())
    args = [
        *COMMON,
        *TWO_PROCESSES,
        "--trainer.num_nodes",
        "2",
        "--trainer.devices",
        "1",
        callback_arg(DumpRankState, folder=str(ranks)),
    ]
    nodes = []
    for node in (0, 1):
        (tmp_path / f"node{node}").mkdir()
        nodes.append(
            start_command(
                args,
                tmp_path / f"node{node}",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                NODE_RANK=str(node),
                WORLD_SIZE="2",
            )
        )
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-3000:]
    assert (
        "GLOBAL_RANK: 0, MEMBER: 1/2" in outputs[0][1]
        and "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1][1]
    )
    assert [
        p for p in (tmp_path / "node1").rglob("*") if p.is_file()
    ] == []  # node 1 wrote nothing
    _check_against_single_process(
        tmp_path / "node0" / "runs" / "quickstart" / "version_0", ranks, single_process
    )
