"""benchmarks/bench_gpu.py: the reduced CPU run end to end, partial results, and the GPU-only
pieces (largest-batch search, peak FLOP/s table) with the device faked."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
SIZES = (64, 96)  # the reduced plan's "224" and "448" slots
MEASUREMENTS = {"env", "grad_agreement_64", "syncs_64", "compile_64"} | {
    f"{kind}_{s}" for kind in ("flops", "train", "inference", "memory", "max_batch") for s in SIZES}


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def _records(out: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_gpu")
    proc = _run("--reduced", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc.stdout, _records(out)


@pytest.mark.slow
def test_reduced_run_writes_every_measurement(reduced_run):
    out, _, records = reduced_run
    assert set(records) == MEASUREMENTS
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    assert {n: r["status"] for n, r in records.items() if r["status"] != "ok"} == {
        "max_batch_64": "skipped", "max_batch_96": "skipped", "compile_64": "skipped"}
    assert records["env"]["plan"]["reduced"] and records["env"]["device"] == "cpu"


@pytest.mark.slow
def test_reduced_run_figures_are_sane(reduced_run):
    _, _, r = reduced_run
    for s in SIZES:
        flops = r[f"flops_{s}"]
        assert 2.5 < flops["train_flops_per_image"] / flops["forward_flops_per_image"] < 3.5
        train = r[f"train_{s}"]
        assert min(train["img_per_s"].values()) > 0
        assert train["ratio_iabn_bn"] == pytest.approx(train["img_per_s"]["inplace_abn"] / train["img_per_s"]["bn"])
        assert train["mfu"] == {"inplace_abn": None, "bn": None}  # no peak FLOP/s for a CPU
        assert min(r[f"inference_{s}"]["img_per_s"].values()) > 0
        memory = r[f"memory_{s}"]
        assert min(memory["saved_bytes_per_image"].values()) > 0
        assert memory["saved_ratio_iabn_bn"] <= 0.7, memory


@pytest.mark.slow
def test_reduced_run_counts_one_host_sync_per_inplace_abn_step(reduced_run):
    syncs = reduced_run[2]["syncs_64"]
    assert syncs["method"] == "HostSyncCounter"
    assert syncs["syncs_per_step"] == {"inplace_abn": 1.0, "bn": 0.0}, syncs["counter_kinds"]


@pytest.mark.slow
def test_reduced_run_gradients_agree(reduced_run):
    grad = reduced_run[2]["grad_agreement_64"]
    assert grad["cos_fp32_iabn_bn"] >= 0.9999
    assert grad["cos_bf16_iabn_vs_bn_fp32"] >= grad["cos_bf16_bn_vs_bn_fp32"] - bench.BF16_MARGIN
    assert grad["fp32_ok"] and grad["bf16_ok"]


@pytest.mark.slow
def test_reduced_run_table_has_every_row_and_reprints(reduced_run):
    out, stdout, _ = reduced_run
    assert "| figure | 64 px | 96 px |" in stdout
    for label, _, _ in bench.ROWS:
        assert f"| {label} |" in stdout
    assert "| host syncs per train step, in-place ABN / BN | 1 / 0 | – |" in stdout
    again = _run("--report-only", "--out", str(out), timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout == stdout
    assert (out / "report.md").read_text() == stdout


def test_tiny_budget_skips_the_rest_and_says_why(tmp_path):
    proc = _run("--reduced", "--budget-s", "0.01", "--out", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = _records(tmp_path)
    assert records["env"]["status"] == "ok"
    assert set(records) == MEASUREMENTS
    skipped = {n: r for n, r in records.items() if n != "env"}
    assert all(r["status"] == "skipped" and r["reason"].startswith("budget:") for r in skipped.values())
    assert "| train img/s, in-place ABN / BN | skipped | skipped |" in proc.stdout


def test_killed_run_keeps_what_was_measured(tmp_path):
    child = subprocess.Popen([sys.executable, str(SCRIPT), "--reduced", "--out", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "flops_96.json").exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    records = _records(tmp_path)  # every file there parses: none is half-written
    assert {"env", "flops_64", "flops_96"} <= set(records)
    assert records["flops_96"]["status"] == "ok" and records["flops_96"]["train_flops_per_image"] > 0
    report = _run("--report-only", "--out", str(tmp_path), timeout=120)
    assert report.returncode == 0, report.stderr
    assert "| FLOPs per image, forward / train step | 0.94 G / 2.81 G | 2.11 G / 6.30 G |" in report.stdout


def test_runner_records_errors_and_skips_and_goes_on(tmp_path):
    runner = bench.Runner(tmp_path, budget_s=60, device="cpu")

    def broken():
        raise RuntimeError("out of luck")

    runner.run("first", lambda: {"value": 1})
    runner.run("second", broken)
    runner.run("third", lambda: {"value": 3}, cost_s=1e6)
    runner.run("fourth", lambda: {"status": "timeout", "reason": "too slow"})
    records = _records(tmp_path)
    assert records["first"]["status"] == "ok" and records["first"]["value"] == 1
    assert records["second"] == {**records["second"], "status": "error", "error": "RuntimeError: out of luck"}
    assert records["third"]["status"] == "skipped" and "needs at least 1e+06 s" in records["third"]["reason"]
    assert records["fourth"]["status"] == "timeout"
    assert bench.load_results(tmp_path) == records


def test_report_only_on_a_missing_folder_says_so(tmp_path):
    proc = _run("--report-only", "--out", str(tmp_path / "nothing"), timeout=120)
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr


@pytest.mark.parametrize("limit, cap, expected", [(1000, 4096, (970, 1000)), (5000, 4096, (4096, 4096)),
                                                  (3, 4096, (3, 3)), (0, 4096, (0, 0))])
def test_largest_batch_search_brackets_then_bisects(monkeypatch, limit, cap, expected):
    tried = []

    def fits(model, batch, size, device):
        tried.append(batch)
        return batch <= limit, None

    monkeypatch.setattr(bench, "_fits", fits)
    result = bench.largest_batch(None, 224, guess=300, cap=cap, device="cuda", deadline=time.monotonic() + 60)
    assert expected[0] <= result["largest"] <= expected[1]
    assert result["converged"] and result["capped"] == (limit >= cap)
    assert max(tried) <= cap and len(tried) <= 14
    if result["first_failing"] is not None:
        assert result["first_failing"] > limit


def test_largest_batch_search_stops_at_the_deadline(monkeypatch):
    monkeypatch.setattr(bench, "_fits", lambda model, batch, size, device: (True, None))
    result = bench.largest_batch(None, 224, guess=64, cap=4096, device="cuda", deadline=time.monotonic() - 1)
    assert result == {"largest": 0, "first_failing": None, "capped": False, "converged": False, "tries": []}


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                        ("Tesla V100-SXM2-16GB", None)])
def test_peak_flops_by_device_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert bench.peak_flops("cuda") == peak
    assert bench.peak_flops("cuda", override_tflops=500) == 500e12
    assert bench.peak_flops("cpu") is None
    if peak:
        assert bench.mfu(1e9, 1000.0, peak) == pytest.approx(1e12 / peak)
    assert bench.mfu(None, 1000.0, peak) is None


@pytest.mark.gpu
@pytest.mark.slow
def test_reduced_run_on_cuda_counts_syncs_with_the_debug_mode(tmp_path):
    proc = _run("--reduced", "--device", "cuda", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    syncs = json.loads((tmp_path / "syncs_64.json").read_text())
    assert syncs["method"] == "cuda sync debug warnings"
    assert syncs["syncs_per_step"]["inplace_abn"] <= 1 and syncs["syncs_per_step"]["bn"] == 0, syncs
    memory = json.loads((tmp_path / "memory_64.json").read_text())
    assert memory["peak"]["inplace_abn"]["peak_bytes_per_image"] > 0


@pytest.mark.parametrize("raised, expected", [(None, (True, None)),
                                              (torch.cuda.OutOfMemoryError("CUDA out of memory."), (False, None)),
                                              (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED\nmore"),
                                               (False, "RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))])
def test_a_batch_that_runs_out_of_memory_does_not_fit(monkeypatch, raised, expected):
    model = torch.nn.Linear(2, 2)

    def step():
        model(torch.ones(1, 2)).sum().backward()  # leaves a gradient, as a failed backward may
        if raised is not None:
            raise raised

    monkeypatch.setattr(bench, "train_step", lambda *args: step)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    assert bench._fits(model, 8, 224, "cpu") == expected
    assert model.weight.grad is None


def test_report_renders_the_gpu_only_figures():
    search = {"largest": 1500, "first_failing": 1540, "capped": False, "converged": True, "tries": []}
    results = {
        "env": {"status": "ok", "device": "cuda", "device_name": "NVIDIA H200", "torch": "2.13.0",
                "plan": {"sizes": [224, 448], "reduced": False}, "elapsed_s": 0.1},
        "train_224": {"status": "ok", "img_per_s": {"inplace_abn": 3012.4, "bn": 2950.0}, "ratio_iabn_bn": 1.0211,
                      "mfu": {"inplace_abn": 0.1043, "bn": 0.1021}, "elapsed_s": 10},
        "memory_448": {"status": "ok", "saved_bytes_per_image": {"inplace_abn": 2**20, "bn": 2**21},
                       "saved_ratio_iabn_bn": 0.5, "elapsed_s": 2,
                       "peak": {"inplace_abn": {"peak_bytes_per_image": 50 * 2**20},
                                "bn": {"peak_bytes_per_image": 80 * 2**20}}},
        "max_batch_448": {"status": "ok", "inplace_abn": search, "bn": {**search, "largest": 1000},
                          "ratio_iabn_bn": 1.5, "elapsed_s": 30},
        "max_batch_224": {"status": "ok", "inplace_abn": {**search, "largest": 4096, "capped": True},
                          "bn": {**search, "largest": 3000, "converged": False}, "ratio_iabn_bn": 1.365, "elapsed_s": 40},
        "compile_224": {"status": "timeout", "reason": "torch.compile run killed after 180 s", "elapsed_s": 180},
    }
    table = bench.render_report(results)
    assert "NVIDIA H200 (cuda, full mode)" in table
    assert "| train img/s, in-place ABN / BN | 3,012 / 2,950 | – |" in table
    assert "| train MFU, in-place ABN / BN | 10.4 % / 10.2 % | – |" in table
    assert "| peak memory per image at a fixed batch, in-place ABN / BN | – | 50 MiB / 80 MiB |" in table
    assert "| largest train batch, in-place ABN / BN | 4096+ / 3000? | 1500 / 1000 |" in table
    assert "| largest train batch, in-place ABN ÷ BN (goal ≥ 1.5×) | 1.36× | 1.50× |" in table
    assert "| compile time (first step), in-place ABN | timeout | – |" in table
    assert "- compile_224: timeout: torch.compile run killed after 180 s" in table
