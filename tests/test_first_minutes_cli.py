"""The first minutes with ``tresnet-ft``: a help page that shows our flags and the recipe's values,
offline runs that list everything missing at once within seconds, and no silent flag abbreviations."""

from __future__ import annotations

import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.run_helpers import REPO, error_line
from tresnet_ft.cli.command import main
from tresnet_ft.fetch.download import unreachable_urls
from tresnet_ft.models import WeightsUnavailableError, create_model
from tresnet_ft.cli.preflight import MissingInputsError, check_inputs

DEAD = "http://127.0.0.1:9"  # nothing listens on the discard port: refused at once, like no network


def _help(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(["fit", *args, "--help"])
    assert stopped.value.code == 0
    return capsys.readouterr().out


def _default(help_text: str, option: str) -> str:
    """The ``default:`` jsonargparse prints for ``option`` (its block ends at the next option)."""
    block = re.search(rf"\n  {re.escape(option)} .*?(?=\n  --)", help_text, re.S)
    assert block is not None, option
    found = re.search(r"default: ([^,)]+)", " ".join(block.group(0).split()))
    assert found is not None, block.group(0)
    return found.group(1)


# -- --help ------------------------------------------------------------------------------------


def test_help_starts_with_our_flags_and_examples_and_shows_the_recipes_values(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    quickstart = _help(capsys, "--recipe", "quickstart")
    head = quickstart[: quickstart.index("\noptions:")]  # before LightningCLI's own options
    assert head.startswith("usage: tresnet-ft fit [--recipe NAME|FILE] [--logger LIST] [--ckpt_path last|best|FILE]")
    for ours in ("--recipe NAME|FILE", "--logger LIST", "--ckpt_path last|best|FILE", "recipe 'quickstart'"):
        assert ours in head
    assert head.count("\n  tresnet-ft fit --recipe") == 3  # three examples
    assert _default(quickstart, "--trainer.max_epochs") == "2"  # quickstart.yaml, not Lightning's null
    assert _default(quickstart, "--data.image_size") == "64"  # not ImageDataModule's 224
    cifar = _help(capsys, "--recipe", "cifar100", "--data.image_size", "96")
    assert _default(cifar, "--trainer.max_epochs") == "40"  # cifar100 -> _paper
    assert _default(cifar, "--model.arch") == "tresnet_v2_l"
    assert _default(cifar, "--data.image_size") == "96"  # the user's flag, on top of the recipe


def test_help_with_a_bad_flag_still_shows_the_recipes_values(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = _help(capsys, "--recipe", "quickstart", "--trainer.max_epoch", "3")
    assert _default(text, "--data.image_size") == "64"


# -- no abbreviations --------------------------------------------------------------------------


@pytest.fixture
def runs_in_tmp(tmp_path, monkeypatch):
    from tresnet_ft.training import loggers

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loggers, "RUNS_DIR", tmp_path / "runs")


def test_a_flag_typo_is_one_error_naming_it_with_the_likely_flag(caplog, runs_in_tmp):
    message = error_line(caplog, ["fit", "--recipe", "quickstart", "--trainer.max_epoch", "3"])
    assert message == ("error: unrecognized arguments: --trainer.max_epoch 3; did you mean --trainer.max_epochs? "
                       "(tresnet-ft fit --help lists the options)")
    # A prefix of a real flag is refused too, even where only one flag has that prefix.
    message = error_line(caplog, ["fit", "--recipe", "quickstart", "--data.image_siz", "32"])
    assert "unrecognized arguments: --data.image_siz 32; did you mean --data.image_size?" in message


# -- offline: everything missing at once, in seconds -------------------------------------------


def _offline_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_")) and k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}
    # Empty caches; the hub is off by request, and the dataset server sits behind a dead proxy,
    # so no download can start whatever this machine's network.
    return {**env, "PYTHONPATH": str(REPO), "COLUMNS": "200", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
            "TRESNET_FT_DATA": str(tmp_path / "data"), "TRESNET_FT_RUNS": str(tmp_path / "runs"),
            "http_proxy": DEAD, "https_proxy": DEAD}


def test_an_offline_run_lists_every_missing_piece_in_one_error_within_seconds(tmp_path):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tresnet_ft.cli.command", "fit", "--recipe", "cifar100"], cwd=tmp_path,
                          env=_offline_env(tmp_path), capture_output=True, text=True, timeout=120, check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # Was 30 s (23 s of hub retries) for the first piece alone; a fresh interpreter importing torch
    # takes ~2 s of this on 2 cores, and Lightning (another ~4 s) is never imported.
    assert elapsed < 5.0, f"{elapsed:.1f} s"
    message = proc.stderr[proc.stderr.index("error: "):]
    assert proc.stderr.count("error: ") == 1
    assert message.startswith("error: This run needs 2 things that are not on this machine")
    weights, data = message.split("\n1. ")[1].split("\n2. ")
    assert "'tresnet_v2_l.miil_in21k'" in weights and str(tmp_path / "hf" / "hub") in weights
    assert "HF_HUB_OFFLINE=1" in weights and "--model.pretrained /path/to/model.safetensors" in weights
    assert f"Dataset 'cifar100' not found in {tmp_path / 'data'}" in data
    assert "Downloading failed (" in data and "cifar-100-python.tar.gz" in data and "MD5" in data
    assert "download=True" not in message  # downloads are on already: no advice to turn them on


def test_downloads_off_and_a_missing_weights_file_are_listed_together_without_network(tmp_path):
    config = {"model": {"arch": "tresnet_m", "pretrained": str(tmp_path / "mine.safetensors")},
              "data": {"dataset": "cifar10", "root": str(tmp_path), "download": False}}
    with pytest.raises(MissingInputsError) as caught:
        check_inputs(config)
    message = str(caught.value)
    assert message.startswith("This run needs 2 things")
    assert f"Weights file {tmp_path / 'mine.safetensors'} does not exist." in message
    assert "cifar-10-batches-py/data_batch_1" in message and "with download=True" in message
    assert "Downloading failed" not in message  # nothing was tried


def test_the_notebook_fit_checks_first_too(tmp_path, monkeypatch):
    import tresnet_ft

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TRESNET_FT_DATA", str(tmp_path / "data"))
    with pytest.raises(MissingInputsError) as caught:
        tresnet_ft.fit(recipe="flowers102", data={"download": False})
    message = str(caught.value)
    assert "'tresnet_v2_l.miil_in21k'" in message
    assert f"Dataset 'flowers102' not found in {tmp_path / 'data' / 'flowers-102'}" in message


def test_what_is_on_disk_or_needs_nothing_passes(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    snapshot = tmp_path / "models--timm--tresnet_m.miil_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({}, snapshot / "model.safetensors")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    check_inputs({"model": {"arch": "tresnet_m", "pretrained": "miil_in1k"}, "data": {"dataset": "quickstart"}})
    with pytest.raises(MissingInputsError, match="tresnet_l.miil_in1k"):
        check_inputs({"model": {"arch": "tresnet_l", "pretrained": True}, "data": {"dataset": "quickstart"}})
    # A checkpoint's hyperparameters decide the weights: only the data is checked then.
    check_inputs({"model": {"arch": "tresnet_l", "pretrained": True}, "data": {"dataset": "quickstart"}},
                 weights=False)


def test_an_unreachable_hub_fails_at_once_without_retries(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", DEAD)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="refused") as caught:
        create_model("tresnet_m", 10, pretrained=True)
    assert time.monotonic() - start < 5.0  # the hub client's retries took ~23 s
    assert "tresnet_m.miil_in21k_ft_in1k" in str(caught.value)


# -- the reachability probe ----------------------------------------------------------------------


class _Answer404(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_probe_counts_any_answer_and_reports_why_the_rest_failed():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer404)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()  # accepts connections (backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    answering = f"http://127.0.0.1:{server.server_address[1]}/missing.tgz"
    mute = f"http://127.0.0.1:{silent.getsockname()[1]}/file.tgz"
    try:
        start = time.monotonic()
        failures = unreachable_urls([answering, mute, f"{DEAD}/x", "file:///nowhere"], timeout=1.0)
        assert time.monotonic() - start < 3.0  # one deadline for all, not one per URL
    finally:
        server.shutdown()
        server.server_close()
        silent.close()
    assert set(failures) == {mute, f"{DEAD}/x"}  # a 404 is an answer; file:// needs no network
    assert "refused" in failures[f"{DEAD}/x"].lower()
    assert "timed out" in failures[mute] or "no answer" in failures[mute]


def test_importing_the_package_turns_off_albumentations_online_version_check():
    """albumentations asks PyPI for a newer release on import: a 2 s wait on an offline machine."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    code = "import tresnet_ft.data, os; print(os.environ['NO_ALBUMENTATIONS_UPDATE'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
