"""Synchronised norms: two processes with half a batch each compute what one process computes
with the whole batch (gloo on CPU)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tresnet_ft import convert_sync_norm
from tresnet_ft.models.norm_act import BatchNormAct2d, InPlaceABN


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


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 5, 4, 3, generator=g) * 2 + 1, torch.randn(6, 5, 4, 3, generator=g)


def _worker(rank, world, port, cls_name, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    layer = convert_sync_norm(_layer({"iabn": InPlaceABN, "bn": BatchNormAct2d}[cls_name]))
    x, grad = _batch()
    part = slice(rank * 3, rank * 3 + 3)
    x_local = x[part].clone().requires_grad_()
    y = layer(x_local)
    y.backward(grad[part])
    torch.save({"y": y.detach(), "dx": x_local.grad, "dw": layer.weight.grad, "db": layer.bias.grad,
                "rm": layer.running_mean, "rv": layer.running_var}, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("cls_name,cls", [("iabn", InPlaceABN), ("bn", BatchNormAct2d)])
def test_two_processes_match_one_big_batch(tmp_path, cls_name, cls):
    mp.start_processes(_worker, args=(2, _free_port(), cls_name, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    layer = _layer(cls)
    x, grad = _batch()
    x = x.requires_grad_()
    y = layer(x)
    y.backward(grad)
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["dx"] for r in ranks]), x.grad, atol=1e-5, rtol=1e-4)
    # parameter gradients are per-rank partial sums; DDP adds them up
    torch.testing.assert_close(ranks[0]["dw"] + ranks[1]["dw"], layer.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ranks[0]["db"] + ranks[1]["db"], layer.bias.grad, atol=1e-4, rtol=1e-4)
    for r in ranks:
        torch.testing.assert_close(r["rm"], layer.running_mean)
        torch.testing.assert_close(r["rv"], layer.running_var)


def test_conversion_marks_every_norm_and_is_inert_without_a_process_group():
    from tresnet_ft import create_model
    model = convert_sync_norm(create_model("tresnet_m", 3))
    norms = [m for m in model.modules() if isinstance(m, BatchNormAct2d)]
    assert norms and all(m.synchronised for m in norms)
    out = model.train()(torch.rand(2, 3, 64, 64))  # no process group: behaves as a local norm
    assert out.shape == (2, 3) and torch.isfinite(out).all()
