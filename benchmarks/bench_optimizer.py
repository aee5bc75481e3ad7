"""Where a TResNet-M training step at 64 px goes on a CPU: forward+backward, AdamW (foreach vs
fused kernel), EMA update (Lightning's per-tensor ``avg_fn`` vs the multi-tensor form that
``tresnet_ft.training.ema.FusedEMAWeightAveraging`` uses). Medians of 6 steps, all in one process, so
the ratios are comparable.

    python benchmarks/bench_optimizer.py
"""
from __future__ import annotations

import time

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn

from tresnet_ft import create_model


def main(batch: int = 16, size: int = 64, steps: int = 8) -> None:
    torch.manual_seed(0)
    model = create_model("tresnet_m", 5, pretrained=None, norm="inplace_abn")
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 5, (batch,))
    optimizers = {
        "AdamW foreach": torch.optim.AdamW(model.parameters(), 1e-4, foreach=True),
        "AdamW fused": torch.optim.AdamW(model.parameters(), 1e-4, fused=True),
    }
    averages = {
        "EMA per-tensor": AveragedModel(model, avg_fn=get_ema_avg_fn(0.95), use_buffers=True),
        "EMA multi-tensor": AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.95), use_buffers=True),
    }
    times: dict[str, list[float]] = {"forward+backward": [], **{k: [] for k in optimizers},
                                     **{k: [] for k in averages}}
    for _ in range(steps):
        start = time.perf_counter()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        times["forward+backward"].append(time.perf_counter() - start)
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            times[name].append(time.perf_counter() - start)
        for name, average in averages.items():
            start = time.perf_counter()
            average.update_parameters(model)
            times[name].append(time.perf_counter() - start)
        model.zero_grad()
    for name, values in times.items():
        print(f"{name:18s} {sorted(values[2:])[len(values[2:]) // 2] * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
