"""The tresnet-ft command: smoke run and model listing."""
import subprocess
import sys

from tresnet_ft.cli import main


def test_smoke_run_trains_and_fuses(caplog):
    caplog.set_level("INFO")
    assert main(["smoke", "--steps", "2", "--batch", "2", "--size", "64"]) == 0
    assert "step 2/2" in caplog.text and "fused vs unfused" in caplog.text


def test_models_lists_every_published_tag():
    out = subprocess.run([sys.executable, "-m", "tresnet_ft.cli", "models"], capture_output=True, text=True,
                         check=True, env={"COLUMNS": "200", "PATH": ""}).stdout
    assert "tresnet_v2_l.miil_in21k" in out and "11221" in out


def test_bad_size_is_one_clear_line_not_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "tresnet_ft.cli", "smoke", "--size", "100"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "multiples of 32" in proc.stderr and "Traceback" not in proc.stderr
