"""Synchronised norms: two processes with parts of a batch compute what one process computes with
the whole batch (gloo on CPU), with one collective per layer each way and no host sync.

All two-process checks share one spawn (each costs seconds on two cores): the workers run every
scenario below and save what they saw; the tests compare that with one process.
"""
import collections
import contextlib
import datetime
import os
import socket
from typing import NamedTuple

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed import distributed_c10d

from tresnet_ft import convert_sync_norm
from benchmarks.host_syncs import HostSyncCounter
from tresnet_ft.models.norm_act import BatchNormAct2d, InPlaceABN
from tresnet_ft.models.sync_norm import distributed_batch_norm, distributed_batch_norm_backward

LAYERS = {"iabn": InPlaceABN, "bn": BatchNormAct2d}
BATCH = 6


class Scenario(NamedTuple):
    layer: str
    dtype: torch.dtype
    rank0_samples: int  # rank 1 gets the rest of the batch
    mean: float  # of the activations, whose spread is 2
    atol: float  # for outputs and input gradients of order one


# float32 resolves 6e-5 at 1000 and bfloat16 keeps 8 significant bits, hence their tolerances.
SCENARIOS = {
    "iabn": Scenario("iabn", torch.float32, 3, 1.0, 1e-5),
    "bn": Scenario("bn", torch.float32, 3, 1.0, 1e-5),
    "iabn_unequal": Scenario("iabn", torch.float32, 1, 1.0, 1e-5),
    "bn_unequal_large_mean": Scenario("bn", torch.float32, 2, 1000.0, 2e-4),
    "bn_empty_rank": Scenario("bn", torch.float32, 0, 1.0, 1e-5),
    "iabn_bf16": Scenario("iabn", torch.bfloat16, 2, 1.0, 3e-2),
    "bn_bf16": Scenario("bn", torch.bfloat16, 2, 1.0, 3e-2),
}
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_single", "_all_gather_base",
               "reduce_scatter", "reduce_scatter_tensor", "broadcast", "reduce", "gather", "scatter",
               "all_to_all", "all_to_all_single", "barrier", "all_gather_object", "broadcast_object_list")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _layer(cls):
    torch.manual_seed(0)
    layer = cls(5, activation="leaky_relu", slope=0.01)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    return layer


def _batch(dtype, mean):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 5, 4, 3, generator=g) * 2 + mean
    return x.to(dtype), torch.randn(BATCH, 5, 4, 3, generator=g).to(dtype)


@contextlib.contextmanager
def _counting_collectives(counts: collections.Counter):
    """Count calls of every torch.distributed collective (both module paths the code may use)."""
    patched = []
    for module in (dist, distributed_c10d):
        for name in COLLECTIVES:
            original = getattr(module, name, None)
            if original is None:
                continue

            def counted(*args, _name=name, _original=original, **kwargs):
                counts[_name] += 1
                return _original(*args, **kwargs)

            setattr(module, name, counted)
            patched.append((module, name, original))
    try:
        yield counts
    finally:
        for module, name, original in patched:
            setattr(module, name, original)


def _run_scenario(rank, name):
    """Forward and backward of one synchronised layer on this rank's part, with counts."""
    cls_name, dtype, split, mean, _ = SCENARIOS[name]
    layer = convert_sync_norm(_layer(LAYERS[cls_name]))
    x, grad = _batch(dtype, mean)
    part = slice(0, split) if rank == 0 else slice(split, BATCH)
    x_local = x[part].clone().requires_grad_()
    forward, backward = collections.Counter(), collections.Counter()
    with HostSyncCounter() as syncs:
        with _counting_collectives(forward):
            y = layer(x_local)
        forward_syncs = dict(syncs.counts)
        with _counting_collectives(backward):
            y.backward(grad[part])
    backward_syncs = dict(syncs.counts - collections.Counter(forward_syncs))
    return {"y": y.detach(), "dx": x_local.grad, "dw": layer.weight.grad, "db": layer.bias.grad,
            "rm": layer.running_mean, "rv": layer.running_var, "forward_collectives": dict(forward),
            "backward_collectives": dict(backward), "forward_syncs": forward_syncs,
            "backward_syncs": backward_syncs}


def _kept_output_syncs(group):
    """Host syncs of both functions called as InPlaceABN calls them when it keeps its output
    (the layer's own weight check is a sync of the layer, outside these functions)."""
    layer = _layer(InPlaceABN)
    x, grad = _batch(torch.bfloat16, 1.0)
    w, b = layer.weight.detach(), layer.bias.detach()
    rm, rv = layer.running_mean, layer.running_var
    with HostSyncCounter() as syncs:
        y, mean, invstd = distributed_batch_norm(x, w, b, rm, rv, 0.1, 1e-5, group)
        distributed_batch_norm_backward(grad, y, b, w.reciprocal(), w.square() * invstd, group)
    return dict(syncs.counts)


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A mismatch in collectives between ranks fails within a minute instead of hanging the suite.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    results = {name: _run_scenario(rank, name) for name in SCENARIOS}
    results["kept_output_syncs"] = _kept_output_syncs(dist.group.WORLD)
    torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("sync_norm")
    mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, start_method="spawn")
    return [torch.load(out / f"{r}.pt", weights_only=True) for r in range(2)]


def _one_process(name):
    cls_name, dtype, _, mean, _ = SCENARIOS[name]
    layer = _layer(LAYERS[cls_name])
    x, grad = _batch(dtype, mean)
    x = x.requires_grad_()
    y = layer(x)
    y.backward(grad)
    return y.detach(), x.grad, layer


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_processes_match_one_big_batch(two_ranks, name):
    ranks = [r[name] for r in two_ranks]
    y, dx, layer = _one_process(name)
    low_precision = y.dtype != torch.float32
    act_tol = dict(atol=SCENARIOS[name].atol, rtol=2e-2 if low_precision else 1e-4)
    # Float32 on both sides, from the same bf16 values; parameter gradients sum products of
    # bf16-rounded factors (x_hat recovered from a bf16 output, for InPlaceABN).
    stat_tol = dict(atol=1e-3, rtol=1e-3) if low_precision else dict(atol=1e-4, rtol=1e-4)
    grad_tol = dict(atol=1e-2, rtol=1e-2) if low_precision else stat_tol
    for key, expected in (("y", y), ("dx", dx)):
        got = torch.cat([r[key] for r in ranks])
        assert got.dtype == expected.dtype
        torch.testing.assert_close(got.float(), expected.float(), **act_tol)
    # parameter gradients are per-rank partial sums in float32; DDP adds them up
    for key, param in (("dw", layer.weight), ("db", layer.bias)):
        assert ranks[0][key].dtype == torch.float32
        torch.testing.assert_close(ranks[0][key] + ranks[1][key], param.grad, **grad_tol)
    for r in ranks:
        torch.testing.assert_close(r["rm"], layer.running_mean, **stat_tol)
        torch.testing.assert_close(r["rv"], layer.running_var, **stat_tol)


@pytest.mark.slow
def test_one_collective_per_layer_each_way(two_ranks):
    for rank in two_ranks:
        for name in SCENARIOS:
            for direction in ("forward_collectives", "backward_collectives"):
                calls = rank[name][direction]
                assert sum(calls.values()) == 1, (name, direction, calls)


@pytest.mark.slow
def test_no_host_syncs(two_ranks):
    for rank in two_ranks:
        for name, (cls_name, *_) in SCENARIOS.items():
            assert rank[name]["backward_syncs"] == {}, (name, rank[name]["backward_syncs"])
            if cls_name == "bn":  # InPlaceABN's forward reads its weights itself: see norm_act
                assert rank[name]["forward_syncs"] == {}, (name, rank[name]["forward_syncs"])
        assert rank["kept_output_syncs"] == {}, rank["kept_output_syncs"]


def test_rejects_input_that_is_not_a_feature_map():
    w = torch.ones(5)
    with pytest.raises(ValueError, match=r"Expected an \[N, C, H, W\] feature map, but got shape \(6, 5\)"):
        distributed_batch_norm(torch.randn(6, 5), w, w, None, None, 0.1, 1e-5, None)
    with pytest.raises(ValueError, match=r"Expected weight of shape \(5,\).*but got \(4,\)"):
        distributed_batch_norm(torch.randn(6, 5, 2, 2), torch.ones(4), w, None, None, 0.1, 1e-5, None)


def test_without_a_group_matches_aten_batch_norm_for_large_means():
    """One process (no group): the same numbers as ATen's kernels, also for activations whose
    mean is 1000 times their spread, where a float32 sum-of-squares variance is off by percents."""
    g = torch.Generator().manual_seed(2)
    f64 = dict(generator=g, dtype=torch.float64)
    x = torch.randn(4, 3, 5, 5, **f64) * 0.5 + 500
    w, b = torch.rand(3, **f64) + 0.5, torch.randn(3, **f64)
    grad = torch.randn(x.shape, **f64)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    y_ref, mean_ref, invstd_ref = torch.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
    grads_ref = torch.ops.aten.native_batch_norm_backward(grad, x, w, None, None, mean_ref, invstd_ref,
                                                          True, 1e-5, [True, True, True])
    rm32, rv32 = torch.zeros(3), torch.ones(3)
    y, mean, invstd = distributed_batch_norm(x.float(), w.float(), b.float(), rm32, rv32, 0.1, 1e-5, None)
    grads = distributed_batch_norm_backward(grad.float(), x.float(), mean, invstd, w.float(), None)
    torch.testing.assert_close(y.double(), y_ref, atol=2e-4, rtol=0)  # fp32 spacing at 500 is 3e-5
    torch.testing.assert_close(invstd.double(), invstd_ref, atol=0, rtol=1e-4)
    torch.testing.assert_close(rv32.double(), rv, atol=0, rtol=1e-4)
    for got, expected in zip(grads, grads_ref):
        torch.testing.assert_close(got.double(), expected, atol=1e-3, rtol=1e-3)


def test_conversion_marks_every_norm_and_is_inert_without_a_process_group():
    from tresnet_ft import create_model
    model = convert_sync_norm(create_model("tresnet_m", 3))
    norms = [m for m in model.modules() if isinstance(m, BatchNormAct2d)]
    assert norms and all(m.synchronised for m in norms)
    out = model.train()(torch.rand(2, 3, 64, 64))  # no process group: behaves as a local norm
    assert out.shape == (2, 3) and torch.isfinite(out).all()
