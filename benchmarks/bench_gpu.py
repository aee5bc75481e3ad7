"""TResNet-M on one GPU in bf16: in-place ABN vs BN speed, host syncs, memory, fusion, compile, MFU.

One command on a GPU box (one H100/H200; an estimated 4-6 minutes, not yet timed on a GPU, most
of it the largest-batch searches and ``torch.compile``). It stays under 8 minutes, startup
included: a measurement starts only if its minimum time fits ``--budget-s`` (default 420 s), and
the open-ended ones (largest-batch search, compile) are cut to what is left::

    python benchmarks/bench_gpu.py --out bench_out/

Every measurement is written to ``bench_out/<name>.json`` the moment it is done (temp file, then
``os.replace``), so a timeout or a kill keeps what was measured. At the end a Markdown table is
printed (and saved as ``report.md``); ``--report-only --out bench_out/`` prints it again from the
folder. Without a CUDA device (or with ``--reduced``) the same code runs tiny (64 and 96 px in the
224 and 448 slots, batch 2-4, one warm-up and one timed step; about 20 s on a 2-core CPU, one
thread) so CI catches breakage: its numbers are not GPU figures.

Every training step is ``TResNetClassifier``'s without Lightning: ``refresh_invertibility(model)``
(the one host sync in-place ABN needs), bf16 autocast forward, cross-entropy, backward, fused
AdamW step, ``zero_grad(set_to_none=True)``; weights and activations are channels_last. Every
norm gets a non-zero scale, as after loading published weights. What each figure means:

- ``flops_<px>``: model FLOPs per image (``FlopCounterMode``, 2 per multiply-add, convs and the
  fc), forward and forward+backward.
- ``train_<px>``: training img/s for ``norm="inplace_abn"`` and ``norm="bn"`` (warm-up, then
  round-robin rounds of a fixed step count timed with CUDA events; median round), the ratio
  iabn/bn, and MFU = FLOPs/img x img/s / the device's peak dense bf16 FLOP/s (null when the
  device is not in ``PEAK_BF16_FLOPS``; ``--peak-tflops`` overrides).
- ``syncs_<px>``: device-to-host syncs per training step: ``torch.cuda.set_sync_debug_mode("warn")``
  warnings on a GPU, ``HostSyncCounter`` everywhere (the CPU stand-in). In-place ABN with the
  refresh should make exactly one; BN none.
- ``memory_<px>``: bytes autograd saves for backward per image (parameters and the one-off bf16
  weight copies excluded: the difference between batch 2B and B, over B; exact and repeatable),
  ratio iabn/bn (goal <= 0.7); on a GPU also ``max_memory_allocated`` per image at a fixed batch.
- ``max_batch_<px>`` (GPU only): the largest training batch that fits, by bracketing and
  bisection on ``torch.cuda.OutOfMemoryError`` (capped at ``--max-batch-cap``, each search bounded
  by ``--search-s``), and the ratio iabn/bn (goal >= 1.5x).
- ``inference_<px>``: eval img/s of ``fuse_for_inference(model)`` vs the unfused eval model
  (``inference_mode``, bf16 autocast, channels_last) and their ratio.
- ``grad_agreement_<px>``: cosine of the flattened whole-model gradients of in-place ABN vs BN on
  the same weights and batch, in fp32 (goal >= 0.9999; TF32 off) and in bf16, where
  cos(iabn bf16, bn fp32) should be no worse than cos(bn bf16, bn fp32) minus ``BF16_MARGIN``.
- ``compile_<px>``: ``torch.compile`` vs eager training img/s for in-place ABN, in a child process
  killed after ``--compile-timeout-s``; the first compiled step's time is the compile time.

A measurement that raises is recorded with ``"status": "error"`` and the run goes on (exit code
1 at the end); one that no longer fits the budget is recorded as ``"skipped"``, and a compile
killed at its limit as ``"timeout"``.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: make `benchmarks.` importable
    import sys as _sys
    from pathlib import Path as _Path

    _sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))

from tresnet_ft import create_model, fuse_for_inference
from tresnet_ft.models import refresh_invertibility
from benchmarks.host_syncs import HostSyncCounter
from benchmarks.memory import saved_activation_bytes
from tresnet_ft.models.norm_act import BatchNormAct2d
from tresnet_ft.training.optim import build_optimizer, param_groups

log = logging.getLogger("bench_gpu")

ARCH, NUM_CLASSES = "tresnet_m", 1000
NORMS = ("inplace_abn", "bn")
DTYPE = torch.bfloat16
FP32_COSINE_GOAL = 0.9999
BF16_MARGIN = 1e-3  # cos(iabn bf16, bn fp32) may trail cos(bn bf16, bn fp32) by this much
# Peak dense (no sparsity) bf16 tensor-core FLOP/s, matched as substrings of the device name in
# this order (so "H100 PCIe" wins over "H100", and GH200 counts as H200).
PEAK_BF16_FLOPS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12))


@dataclass(frozen=True)
class Plan:
    """What to run and how big; ``full`` for a GPU, ``reduced`` for CI on a CPU."""

    device: str
    reduced: bool
    sizes: tuple[int, ...]  # the "224" and "448" slots
    train_batch: dict[int, int]  # per size: throughput and syncs
    infer_batch: dict[int, int]
    peak_batch: dict[int, int]  # fixed batch for max_memory_allocated per image (GPU)
    saved_batch: dict[int, int]  # per size: B in the saved-for-backward difference (2B - B)
    grad_batch: int
    warmup: int  # untimed steps before timing
    steps: int  # steps per timed round
    rounds: int  # round-robin rounds; the median is reported
    sync_steps: int
    sync_sizes: tuple[int, ...]
    max_batch_cap: int
    search_s: float  # time bound of one largest-batch search
    compile: bool
    compile_timeout_s: float
    cost_s: dict[str, float] = field(default_factory=dict)  # least time each kind needs to start

    @classmethod
    def full(cls, device: str, **overrides: Any) -> "Plan":
        return cls(device=device, reduced=False, sizes=(224, 448), train_batch={224: 128, 448: 32},
                   infer_batch={224: 256, 448: 64}, peak_batch={224: 64, 448: 16}, saved_batch={224: 8, 448: 4},
                   grad_batch=32, warmup=5, steps=10, rounds=3, sync_steps=5, sync_sizes=(224, 448),
                   max_batch_cap=4096, search_s=40.0, compile=True, compile_timeout_s=180.0,
                   cost_s={"flops": 5, "train": 20, "syncs": 10, "memory": 10, "max_batch": 20,
                           "inference": 10, "grad_agreement": 10, "compile": 60}, **overrides)

    @classmethod
    def reduced_plan(cls, device: str, **overrides: Any) -> "Plan":
        return cls(device=device, reduced=True, sizes=(64, 96), train_batch={64: 4, 96: 2},
                   infer_batch={64: 4, 96: 4}, peak_batch={64: 4, 96: 2}, saved_batch={64: 2, 96: 1},
                   grad_batch=4, warmup=1, steps=1, rounds=1, sync_steps=1, sync_sizes=(64,),
                   max_batch_cap=64, search_s=10.0, compile=False, compile_timeout_s=300.0,
                   cost_s={"flops": 1, "train": 3, "syncs": 3, "memory": 2, "max_batch": 5,
                           "inference": 1, "grad_agreement": 3, "compile": 30}, **overrides)


# --------------------------------------------------------------------------- results on disk


def write_json_atomic(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` so that a reader (or a kill) never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_results(out: Path) -> dict[str, dict[str, Any]]:
    """Every measurement record in ``out``, by name (``report.md`` and temp files ignored)."""
    if not out.is_dir():
        raise FileNotFoundError(f"Expected a results folder from a previous run, but {out} does not exist.")
    return {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if not p.name.startswith(".")}


class Runner:
    """Runs measurements under a global time budget; each one's record is written as it ends."""

    def __init__(self, out: Path, budget_s: float, device: str) -> None:
        self.out, self.budget_s, self.device = out, budget_s, device
        self.start = time.monotonic()
        self.results: dict[str, dict[str, Any]] = {}

    def remaining_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def ok(self, name: str) -> Optional[dict[str, Any]]:
        record = self.results.get(name)
        return record if record and record["status"] == "ok" else None

    def run(self, name: str, measure: Callable[[], dict[str, Any]], cost_s: float = 0.0) -> dict[str, Any]:
        """Run ``measure`` unless fewer than ``cost_s`` seconds of the budget are left (a
        measurement that costs nothing always runs)."""
        t0 = time.monotonic()
        if cost_s > 0 and self.remaining_s() < cost_s:
            record = {"status": "skipped", "reason": f"budget: {max(self.remaining_s(), 0):.0f} s left of "
                                                     f"{self.budget_s:g} s, needs at least {cost_s:g} s"}
        else:
            log.info("measuring %s (%.0f s of the budget left)", name, self.remaining_s())
            try:
                record = {"status": "ok", **measure()}
            except Exception as exc:  # one failing measurement must not stop the others
                log.exception("%s failed", name)
                record = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            _free_memory(self.device)
        record = {"name": name, **record, "elapsed_s": round(time.monotonic() - t0, 3)}
        write_json_atomic(self.out / f"{name}.json", record)
        self.results[name] = record
        return record


def _free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- models and steps


def pretrained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm of a freshly built model published-looking values, in place.

    Scales in [0.5, 1.5], except the last norm of each residual branch (zero in a fresh model,
    which in-place ABN cannot invert), which gets a small scale in [0.1, 0.3] as in trained
    ResNets: with full-size scales there too, the gradients of this deep random network explode
    and bf16 rounding swamps them. Small shifts, and running statistics for eval.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BatchNormAct2d):
                n, branch_end = m.num_features, not m.weight.any()
                low, width = (0.1, 0.2) if branch_end else (0.5, 1.0)
                m.weight.copy_(low + width * torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(1 + 0.1 * torch.randn(n, generator=gen).abs())
    return model


class Models:
    """One TResNet-M per norm on the device, all with the same pretrained-like weights.

    ``fresh(norm)`` resets that model to those weights (a copy into its own storage, far cheaper
    than building or deep-copying a model on a CPU); the two norms share parameter names.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self._models: dict[str, nn.Module] = {}
        self._state: Optional[dict[str, torch.Tensor]] = None

    def fresh(self, norm: str) -> nn.Module:
        if self._state is None:
            first = pretrained_like(create_model(ARCH, NUM_CLASSES, norm="inplace_abn", channels_last=True))
            self._models["inplace_abn"] = first.to(self.device)
            self._state = {k: v.detach().clone() for k, v in first.state_dict().items()}
        if norm not in self._models:
            self._models[norm] = create_model(ARCH, NUM_CLASSES, norm=norm, channels_last=True).to(self.device)
        model = self._models[norm]
        model.load_state_dict(self._state)
        model.train().requires_grad_(True)
        model.zero_grad(set_to_none=True)
        return model


def _autocast(device: str, enabled: bool = True) -> contextlib.AbstractContextManager:
    return torch.autocast(torch.device(device).type, dtype=DTYPE, enabled=enabled)


def _batch(batch: int, size: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[B, 3, size, size]`` in [0, 1] (NCHW, as a loader gives them) and labels ``[B]``,
    made on the device (a largest-batch try at 448 px would otherwise fill host memory)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=gen, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen, device=device)
    return x, y


def train_step(model: nn.Module, batch: int, size: int, device: str,
               forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Callable[[], None]:
    """The training step ``TResNetClassifier`` runs, on a fixed batch, with its own fused AdamW.

    ``forward``: what computes the logits (e.g. ``torch.compile(model)``); ``model`` by default.
    """
    optimizer = build_optimizer("adamw", param_groups(model, lr=1e-4, weight_decay=1e-4))
    x, y = _batch(batch, size, device)
    forward = model if forward is None else forward

    def step() -> None:
        refresh_invertibility(model)  # every in-place ABN layer decided with one host sync
        with _autocast(device):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def infer_step(model: nn.Module, batch: int, size: int, device: str) -> Callable[[], None]:
    x, _ = _batch(batch, size, device)

    def step() -> None:
        with torch.inference_mode(), _autocast(device):
            model(x)

    return step


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(step: Callable[[], None], steps: int, device: str) -> float:
    """Seconds for ``steps`` calls of ``step``: CUDA events on a GPU, ``perf_counter`` on a CPU."""
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t0


def images_per_s(steps: dict[str, Callable[[], None]], batch: int, plan: Plan) -> dict[str, float]:
    """img/s of each step: warm-up, then round-robin rounds (one machine state for all); medians."""
    for step in steps.values():
        for _ in range(plan.warmup):
            step()
    _synchronize(plan.device)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(plan.rounds):
        for name, step in steps.items():
            seconds[name].append(time_steps(step, plan.steps, plan.device))
    return {name: batch * plan.steps / statistics.median(s) for name, s in seconds.items()}


def peak_flops(device: str, override_tflops: Optional[float] = None) -> Optional[float]:
    """Peak dense bf16 FLOP/s of ``device`` from ``PEAK_BF16_FLOPS``, or ``None`` if unknown."""
    if override_tflops:
        return override_tflops * 1e12
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def mfu(flops_per_image: Optional[float], img_per_s: float, peak: Optional[float]) -> Optional[float]:
    return None if not flops_per_image or not peak else flops_per_image * img_per_s / peak


# --------------------------------------------------------------------------- measurements


def measure_env(plan: Plan, peak: Optional[float]) -> dict[str, Any]:
    cuda = plan.device.startswith("cuda")
    props = torch.cuda.get_device_properties(torch.device(plan.device)) if cuda else None
    return {
        "device": plan.device, "device_name": props.name if props else (platform.processor() or platform.machine()),
        "device_memory_bytes": props.total_memory if props else None, "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "python": platform.python_version(),
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), "peak_bf16_flops": peak,
        "model": ARCH, "dtype": "bf16 autocast", "memory_format": "channels_last", "optimizer": "AdamW (fused)",
        "plan": asdict(plan), "argv": sys.argv[1:],
    }


def measure_flops(size: int) -> dict[str, Any]:
    """FLOPs per image of one forward and one forward+backward (counted on the meta device:
    nothing runs; convs and the fc are what is counted, the same for either norm)."""
    model = create_model(ARCH, NUM_CLASSES, norm="bn", channels_last=True).to("meta").train()
    batch = 2
    x = torch.empty(batch, 3, size, size, device="meta")
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(model(x), y)
        forward = counter.get_total_flops()
        loss.backward()
        total = counter.get_total_flops()
    return {"size": size, "forward_flops_per_image": forward / batch, "train_flops_per_image": total / batch}


def measure_train(plan: Plan, models: Models, size: int, flops: Optional[dict],
                  peak: Optional[float]) -> dict[str, Any]:
    batch = plan.train_batch[size]
    steps = {norm: train_step(models.fresh(norm), batch, size, plan.device) for norm in NORMS}
    speed = images_per_s(steps, batch, plan)
    per_image = flops["train_flops_per_image"] if flops else None
    return {"size": size, "batch": batch, "steps": plan.steps, "rounds": plan.rounds, "warmup": plan.warmup,
            "img_per_s": speed, "ratio_iabn_bn": speed["inplace_abn"] / speed["bn"],
            "mfu": {norm: mfu(per_image, speed[norm], peak) for norm in NORMS}}


def _cuda_sync_warnings(step: Callable[[], None], steps: int) -> tuple[int, list[str]]:
    """Syncs flagged by ``set_sync_debug_mode("warn")`` over ``steps`` steps, and a few messages."""
    torch.cuda.synchronize()  # outside the window: synchronize itself would be flagged
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    messages = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    return len(messages), sorted(set(messages))[:3]


def measure_syncs(plan: Plan, models: Models, size: int) -> dict[str, Any]:
    result: dict[str, Any] = {"size": size, "steps": plan.sync_steps, "syncs_per_step": {},
                              "counter_per_step": {}, "counter_kinds": {}}
    for norm in NORMS:
        step = train_step(models.fresh(norm), plan.train_batch[size], size, plan.device)
        step()  # warm-up: optimizer state, kernels
        with HostSyncCounter() as counter:
            for _ in range(plan.sync_steps):
                step()
        result["counter_per_step"][norm] = counter.total / plan.sync_steps
        result["counter_kinds"][norm] = dict(counter.counts)
        if plan.device.startswith("cuda"):
            count, messages = _cuda_sync_warnings(step, plan.sync_steps)
            result["syncs_per_step"][norm] = count / plan.sync_steps
            result.setdefault("cuda_messages", {})[norm] = messages
        else:
            result["syncs_per_step"][norm] = counter.total / plan.sync_steps
    result["method"] = "cuda sync debug warnings" if plan.device.startswith("cuda") else "HostSyncCounter"
    return result


def _saved_bytes_per_image(model: nn.Module, batch: int, size: int, device: str) -> float:
    """Saved-for-backward bytes per image: (bytes at 2B - bytes at B) / B, so that what does not
    grow with the batch (the bf16 copies of the weights autocast keeps) cancels."""
    counts = []
    for b in (batch, 2 * batch):
        x, _ = _batch(b, size, device)
        refresh_invertibility(model)
        with _autocast(device):
            counts.append(saved_activation_bytes(model, x))
    return (counts[1] - counts[0]) / batch


def _peak_bytes_per_image(model: nn.Module, batch: int, size: int, device: str) -> dict[str, float]:
    step = train_step(model, batch, size, device)
    step()  # optimizer state exists from here on
    torch.cuda.synchronize()
    _free_memory(device)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"peak_bytes_per_image": peak / batch, "step_bytes_per_image": (peak - before) / batch}


def measure_memory(plan: Plan, models: Models, size: int) -> dict[str, Any]:
    batch = plan.saved_batch[size]
    result: dict[str, Any] = {"size": size, "saved_batch": batch, "saved_bytes_per_image": {}}
    for norm in NORMS:
        model = models.fresh(norm)
        result["saved_bytes_per_image"][norm] = _saved_bytes_per_image(model, batch, size, plan.device)
        if plan.device.startswith("cuda"):
            result.setdefault("peak", {})[norm] = _peak_bytes_per_image(model, plan.peak_batch[size], size, plan.device)
    saved = result["saved_bytes_per_image"]
    result["saved_ratio_iabn_bn"] = saved["inplace_abn"] / saved["bn"]
    if "peak" in result:
        result["peak_batch"] = plan.peak_batch[size]
        peak = result["peak"]
        result["step_bytes_ratio_iabn_bn"] = (peak["inplace_abn"]["step_bytes_per_image"]
                                              / peak["bn"]["step_bytes_per_image"])
    return result


def _fits(model: nn.Module, batch: int, size: int, device: str) -> tuple[bool, Optional[str]]:
    """Whether one training step at ``batch`` runs, and why not if another error than
    ``OutOfMemoryError`` stopped it (cuDNN and cuBLAS report some exhaustion as their own
    status errors, so any ``RuntimeError`` counts as "does not fit" and is recorded)."""
    failure: Optional[str] = None
    try:
        train_step(model, batch, size, device)()
        torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError:
        failure = "out of memory"  # cleaned up below, once the traceback's frames are gone
    except RuntimeError as exc:
        failure = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    model.zero_grad(set_to_none=True)  # a failed backward leaves some gradients behind
    _free_memory(device)
    return failure is None, failure if failure != "out of memory" else None


def _next_batch(lo: int, hi: Optional[int], cap: int) -> Optional[int]:
    """The next batch to try given ``lo`` (largest that fits, 0: none yet) and ``hi`` (smallest
    that does not, ``None``: none yet), or ``None`` once the bracket is within 3 % or at the cap."""
    if hi is None:
        return None if lo >= cap else min(2 * lo, cap)
    if lo == 0:
        return None if hi == 1 else hi // 2
    return None if hi - lo <= max(1, lo // 32) else (lo + hi) // 2


def largest_batch(model: nn.Module, size: int, guess: int, cap: int, device: str, deadline: float) -> dict[str, Any]:
    """Bracket the largest training batch that fits from ``guess`` (doubling or halving), then
    bisect; stops at ``cap`` or at ``deadline`` (``converged`` says which)."""
    lo, hi, tries = 0, None, []
    batch: Optional[int] = max(1, min(guess, cap))
    while batch is not None and time.monotonic() < deadline:
        t0 = time.monotonic()
        fits, error = _fits(model, batch, size, device)
        tries.append({"batch": batch, "fits": fits, "seconds": round(time.monotonic() - t0, 2),
                      **({"error": error} if error else {})})
        lo, hi = (batch, hi) if fits else (lo, batch)
        batch = _next_batch(lo, hi, cap)
    return {"largest": lo, "first_failing": hi, "capped": lo >= cap, "converged": batch is None, "tries": tries}


def measure_max_batch(plan: Plan, models: Models, size: int, runner: Runner) -> dict[str, Any]:
    memory = runner.ok(f"memory_{size}")
    free, _ = torch.cuda.mem_get_info()
    result: dict[str, Any] = {"size": size, "cap": plan.max_batch_cap}
    for norm in NORMS:
        model = models.fresh(norm)
        per_image = memory["peak"][norm]["step_bytes_per_image"] if memory else None
        guess = int(0.9 * free / per_image) if per_image else 64
        deadline = time.monotonic() + max(1.0, min(plan.search_s, runner.remaining_s() / 2))
        result[norm] = largest_batch(model, size, guess, plan.max_batch_cap, plan.device, deadline)
    result["ratio_iabn_bn"] = result["inplace_abn"]["largest"] / max(1, result["bn"]["largest"])
    return result


def measure_inference(plan: Plan, models: Models, size: int, flops: Optional[dict],
                      peak: Optional[float]) -> dict[str, Any]:
    batch = plan.infer_batch[size]
    model = models.fresh("inplace_abn").eval()
    fused = fuse_for_inference(model)
    steps = {"fused": infer_step(fused, batch, size, plan.device),
             "unfused": infer_step(model, batch, size, plan.device)}
    speed = images_per_s(steps, batch, plan)
    per_image = flops["forward_flops_per_image"] if flops else None
    return {"size": size, "batch": batch, "steps": plan.steps, "rounds": plan.rounds, "img_per_s": speed,
            "ratio_fused_unfused": speed["fused"] / speed["unfused"],
            "mfu": {name: mfu(per_image, speed[name], peak) for name in steps}}


@contextlib.contextmanager
def _exact_fp32(device: str):
    """TF32 off for the fp32 gradients (cuDNN convs use it by default on Ampere and later)."""
    if not device.startswith("cuda"):
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def flat_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> torch.Tensor:
    """All parameter gradients of one cross-entropy step, flattened in parameter order, float64."""
    model.zero_grad(set_to_none=True)
    refresh_invertibility(model)
    with _autocast(x.device.type, enabled=bf16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return torch.cat([p.grad.double().flatten() for p in model.parameters()])


def measure_grad_agreement(plan: Plan, models: Models, size: int) -> dict[str, Any]:
    iabn, bn = models.fresh("inplace_abn"), models.fresh("bn")
    assert [n for n, _ in iabn.named_parameters()] == [n for n, _ in bn.named_parameters()]
    x, y = _batch(plan.grad_batch, size, plan.device, seed=1)
    with _exact_fp32(plan.device):
        grads = {(norm, bf16): flat_gradient(model, x, y, bf16)
                 for norm, model in (("inplace_abn", iabn), ("bn", bn)) for bf16 in (False, True)}

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(F.cosine_similarity(a, b, dim=0))

    ref = grads[("bn", False)]
    fp32 = cos(grads[("inplace_abn", False)], ref)
    iabn_bf16, bn_bf16 = cos(grads[("inplace_abn", True)], ref), cos(grads[("bn", True)], ref)
    return {"size": size, "batch": plan.grad_batch, "cos_fp32_iabn_bn": fp32, "fp32_goal": FP32_COSINE_GOAL,
            "fp32_ok": fp32 >= FP32_COSINE_GOAL, "cos_bf16_iabn_vs_bn_fp32": iabn_bf16,
            "cos_bf16_bn_vs_bn_fp32": bn_bf16, "bf16_margin": BF16_MARGIN,
            "bf16_ok": iabn_bf16 >= bn_bf16 - BF16_MARGIN}


def measure_compile(plan: Plan, models: Models, size: int, flops: Optional[dict],
                    peak: Optional[float]) -> dict[str, Any]:
    """Eager vs ``torch.compile`` training img/s for in-place ABN (run in the child process)."""
    batch = plan.train_batch[size]
    model = models.fresh("inplace_abn")
    compiled = train_step(model, batch, size, plan.device, forward=torch.compile(model))
    t0 = time.perf_counter()
    compiled()  # compiles forward and backward
    _synchronize(plan.device)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled()  # a recompile here would show as a second slow step
    _synchronize(plan.device)
    second_step_s = time.perf_counter() - t0
    speed = images_per_s({"compiled": compiled, "eager": train_step(model, batch, size, plan.device)}, batch, plan)
    per_image = flops["train_flops_per_image"] if flops else None
    graph_breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    return {"size": size, "batch": batch, "norm": "inplace_abn", "compile_s": compile_s,
            "second_step_s": second_step_s, "graph_breaks": graph_breaks, "img_per_s": speed,
            "ratio_compiled_eager": speed["compiled"] / speed["eager"],
            "mfu": {name: mfu(per_image, speed[name], peak) for name in speed}}


def measure_compile_in_child(plan: Plan, args: argparse.Namespace, size: int, runner: Runner) -> dict[str, Any]:
    """Run :func:`measure_compile` in a child process (its own session) and kill it past the
    time limit: a compile cannot be interrupted from inside the process."""
    timeout = max(1.0, min(plan.compile_timeout_s, runner.remaining_s()))
    path = runner.out / f"compile_{size}.json"
    path.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--compile-child", str(size), "--out",
               str(runner.out), "--device", plan.device, "--budget-s", str(timeout)]
    command += ["--reduced"] if plan.reduced else []
    command += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
    _free_memory(plan.device)  # the child needs the device memory this process caches
    child = subprocess.Popen(command, start_new_session=True)
    try:
        child.wait(timeout=timeout)
    except BaseException as exc:  # the time limit, or this process being stopped: end the child too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # the child and its compile workers
        child.wait()
        if not isinstance(exc, subprocess.TimeoutExpired):
            raise
        return {"status": "timeout", "size": size, "reason": f"torch.compile run killed after {timeout:.0f} s"}
    if child.returncode != 0 or not path.exists():
        raise RuntimeError(f"the compile child exited with code {child.returncode} without a result")
    record = json.loads(path.read_text())
    return {k: v for k, v in record.items() if k not in ("name", "elapsed_s")}


# --------------------------------------------------------------------------- the table


def _x(ratio: Optional[float]) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def _n(value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _mib(nbytes: Optional[float]) -> str:
    return "–" if nbytes is None else f"{nbytes / 2**20:.3g} MiB"


def _cos(value: float) -> str:
    """A cosine, as ``1 − 5e-13`` when it is too close to 1 for seven decimals to show."""
    gap = 1.0 - value
    return f"1 − {gap:.0e}" if 0 < gap < 1e-7 else f"{value:.7f}"


def _pair(a: str, b: str) -> str:
    return f"{a} / {b}"


def _pairs(key: str, fmt: Callable[[Any], str], a: str = "inplace_abn", b: str = "bn") -> Callable[[dict], str]:
    """A cell ``fmt(record[key][a]) / fmt(record[key][b])``."""
    return lambda r: _pair(fmt(r[key][a]), fmt(r[key][b]))


def _largest(search: dict[str, Any]) -> str:
    """``N``, ``N+`` (the cap fits) or ``N?`` (the search ran out of time first)."""
    return f"{search['largest']}{'+' if search['capped'] else '' if search['converged'] else '?'}"


def _peak_per_image(peak: dict[str, float]) -> str:
    return _mib(peak["peak_bytes_per_image"])


# (row label, measurement kind, cell from an "ok" record)
ROWS: tuple[tuple[str, str, Callable[[dict[str, Any]], str]], ...] = (
    ("FLOPs per image, forward / train step", "flops",
     lambda r: _pair(f"{r['forward_flops_per_image'] / 1e9:.2f} G", f"{r['train_flops_per_image'] / 1e9:.2f} G")),
    ("train img/s, in-place ABN / BN", "train", _pairs("img_per_s", _n)),
    ("train speed, in-place ABN ÷ BN", "train", lambda r: _x(r["ratio_iabn_bn"])),
    ("train MFU, in-place ABN / BN", "train", _pairs("mfu", _pct)),
    ("host syncs per train step, in-place ABN / BN", "syncs", _pairs("syncs_per_step", lambda v: f"{v:g}")),
    ("saved for backward per image, in-place ABN / BN", "memory", _pairs("saved_bytes_per_image", _mib)),
    ("saved for backward, in-place ABN ÷ BN (goal ≤ 0.7×)", "memory", lambda r: _x(r["saved_ratio_iabn_bn"])),
    ("peak memory per image at a fixed batch, in-place ABN / BN", "memory", _pairs("peak", _peak_per_image)),
    ("largest train batch, in-place ABN / BN", "max_batch",
     lambda r: _pair(_largest(r["inplace_abn"]), _largest(r["bn"]))),
    ("largest train batch, in-place ABN ÷ BN (goal ≥ 1.5×)", "max_batch", lambda r: _x(r["ratio_iabn_bn"])),
    ("inference img/s, fused / unfused", "inference", _pairs("img_per_s", _n, "fused", "unfused")),
    ("inference speed, fused ÷ unfused", "inference", lambda r: _x(r["ratio_fused_unfused"])),
    ("inference MFU, fused", "inference", lambda r: _pct(r["mfu"]["fused"])),
    ("gradient cosine fp32, in-place ABN vs BN (goal ≥ 0.9999)", "grad_agreement",
     lambda r: _cos(r["cos_fp32_iabn_bn"])),
    ("gradient cosine bf16 vs BN fp32, in-place ABN / BN", "grad_agreement",
     lambda r: _pair(f"{r['cos_bf16_iabn_vs_bn_fp32']:.5f}", f"{r['cos_bf16_bn_vs_bn_fp32']:.5f}")),
    ("compile time (first step), in-place ABN", "compile", lambda r: f"{r['compile_s']:.0f} s"),
    ("train img/s compiled / eager, in-place ABN", "compile", _pairs("img_per_s", _n, "compiled", "eager")),
    ("train speed, compiled ÷ eager", "compile", lambda r: _x(r["ratio_compiled_eager"])),
)


def _cell(record: Optional[dict[str, Any]], cell: Callable[[dict[str, Any]], str]) -> str:
    if record is None:
        return "–"
    if record["status"] != "ok":
        return record["status"]
    try:
        return cell(record)
    except (KeyError, TypeError):  # e.g. no peak memory on a CPU
        return "–"


def _size_of(name: str) -> Optional[int]:
    suffix = name.rsplit("_", 1)[-1]
    return int(suffix) if suffix.isdigit() else None


def _sizes(results: dict[str, dict[str, Any]]) -> list[int]:
    env = results.get("env", {})
    if env.get("status") == "ok":
        return list(env["plan"]["sizes"])
    return sorted({size for size in map(_size_of, results) if size is not None})


def render_report(results: dict[str, dict[str, Any]]) -> str:
    """The Markdown table of ``results`` (records by name, as written by a run), with notes on
    every measurement that was skipped or failed."""
    sizes = _sizes(results)
    env = results.get("env", {})
    mode = "reduced mode, not GPU figures" if env.get("plan", {}).get("reduced") else "full mode"
    lines = [f"TResNet-M, bf16 autocast, channels_last, fused AdamW: {env.get('device_name', '?')} "
             f"({env.get('device', '?')}, {mode}), torch {env.get('torch', '?')}", "",
             "| figure | " + " | ".join(f"{s} px" for s in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    for label, kind, cell in ROWS:
        cells = [_cell(results.get(f"{kind}_{s}"), cell) for s in sizes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ours = {name: r for name, r in results.items() if name == "env" or _size_of(name) in sizes}
    notes = [f"- {name}: {r['status']}: {r.get('reason') or r.get('error', '')}"
             for name, r in ours.items() if r.get("status") != "ok"]
    total = sum(r.get("elapsed_s", 0) for r in ours.values())
    lines += ["", f"Measurements took {total:.0f} s in all."] + (["", "Not measured:"] + notes if notes else [])
    return "\n".join(lines)


# --------------------------------------------------------------------------- the run


Measurement = tuple[str, Callable[[], dict[str, Any]], float]


def planned_measurements(plan: Plan, args: argparse.Namespace, runner: Runner,
                         peak: Optional[float]) -> list[Measurement]:
    """Every measurement of a run, in order: (name, function, least seconds it needs)."""
    models = Models(plan.device)
    cost, first = plan.cost_s, plan.sizes[0]
    todo: list[Measurement] = [("env", lambda: measure_env(plan, peak), 0.0)]
    for s in plan.sizes:
        todo.append((f"flops_{s}", lambda s=s: measure_flops(s), cost["flops"]))
    for s in plan.sizes:
        todo.append((f"train_{s}", lambda s=s: measure_train(plan, models, s, runner.ok(f"flops_{s}"), peak),
                     cost["train"]))
    for s in plan.sync_sizes:
        todo.append((f"syncs_{s}", lambda s=s: measure_syncs(plan, models, s), cost["syncs"]))
    todo.append((f"grad_agreement_{first}", lambda: measure_grad_agreement(plan, models, first),
                 cost["grad_agreement"]))
    for s in plan.sizes:
        todo.append((f"inference_{s}", lambda s=s: measure_inference(plan, models, s, runner.ok(f"flops_{s}"), peak),
                     cost["inference"]))
    for s in plan.sizes:
        todo.append((f"memory_{s}", lambda s=s: measure_memory(plan, models, s), cost["memory"]))
    for s in plan.sizes:
        todo.append((f"max_batch_{s}", lambda s=s: _unless(plan.reduced or not plan.device.startswith("cuda"),
                     "needs a CUDA device and the full plan; memory_<px> has the saved-for-backward ratio",
                     lambda: measure_max_batch(plan, models, s, runner)), cost["max_batch"]))
    todo.append((f"compile_{first}", lambda: _unless(not plan.compile, "torch.compile is off (--compile turns it on)",
                 lambda: measure_compile_in_child(plan, args, first, runner)), cost["compile"]))
    return todo


def _unless(skip: bool, reason: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason} if skip else measure()


def make_plan(args: argparse.Namespace) -> Plan:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"Expected a CUDA device for --device {device}, but torch sees none; leave "
                         "--device out to run the reduced CPU mode.")
    reduced = args.reduced or not device.startswith("cuda")
    plan = Plan.reduced_plan(device) if reduced else Plan.full(device)
    overrides = {k: v for k, v in (("max_batch_cap", args.max_batch_cap), ("search_s", args.search_s),
                                   ("compile_timeout_s", args.compile_timeout_s)) if v is not None}
    if args.compile is not None:
        overrides["compile"] = args.compile
    return Plan(**{**asdict(plan), **overrides})


def run_compile_child(args: argparse.Namespace, plan: Plan, out: Path) -> int:
    """The child side of :func:`measure_compile_in_child`: measure and write ``compile_<px>.json``."""
    size = args.compile_child
    signal.alarm(int(args.budget_s) + 10)  # should the parent be killed outright, do not outlive it
    peak = peak_flops(plan.device, args.peak_tflops)
    flops_path = out / f"flops_{size}.json"
    flops = json.loads(flops_path.read_text()) if flops_path.exists() else None
    flops = flops if flops and flops.get("status") == "ok" else None
    Runner(out, args.budget_s, plan.device).run(
        f"compile_{size}", lambda: measure_compile(plan, Models(plan.device), size, flops, peak))
    return 0


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.report_only:
        print(render_report(load_results(out)))
        return 0
    plan = make_plan(args)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if args.threads or plan.device == "cpu":
        # One thread by default on a CPU: OpenMP threads wait for each other at every op, so on a
        # shared 2-core machine one descheduled thread stalls the other (a reduced run took 78 s
        # with 2 threads under load, 18 s with 1).
        torch.set_num_threads(args.threads or 1)
    if args.compile_child:
        return run_compile_child(args, plan, out)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that a running compile child is ended too
    runner = Runner(out, args.budget_s, plan.device)
    todo = planned_measurements(plan, args, runner, peak_flops(plan.device, args.peak_tflops))
    for name, _, _ in todo:  # a previous run's figures must not mix into this run's table
        (out / f"{name}.json").unlink(missing_ok=True)
    for name, measure, cost_s in todo:
        runner.run(name, measure, cost_s)
    report = render_report(load_results(out))
    (out / "report.md").write_text(report + "\n")
    print(report)
    return 1 if any(r["status"] == "error" for r in runner.results.values()) else 0


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for one JSON file per measurement and report.md")
    parser.add_argument("--reduced", action="store_true", help="tiny sizes (the default without a CUDA device)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what would start after this many seconds")
    parser.add_argument("--report-only", action="store_true", help="print the table of an existing --out folder")
    parser.add_argument("--device", help="e.g. cuda:1 (default: cuda if available, else cpu)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="measure torch.compile (default: on in full mode, off in reduced mode)")
    parser.add_argument("--compile-timeout-s", type=float, help="kill the torch.compile run after this long")
    parser.add_argument("--max-batch-cap", type=int, help="largest batch the search tries (default 4096)")
    parser.add_argument("--search-s", type=float, help="time bound of each largest-batch search (default 40)")
    parser.add_argument("--peak-tflops", type=float,
                        help="peak dense bf16 TFLOP/s for MFU on a device not in the table")
    parser.add_argument("--compile-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: 1 on a CPU, unchanged on a GPU)")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"bench_gpu.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
