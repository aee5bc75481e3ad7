"""atomic_output: an output is written whole or not at all, never over something that is not an
output of ours (a folder, a device, a FIFO, a socket, an input), and a full disk is one clear error."""
from __future__ import annotations

import errno
import os
import socket
import stat

import pytest

from tresnet_ft.errors import InvalidValueError, UserError
from tresnet_ft.outputs import DiskFullError, atomic_output, check_output, partial_path


def _names(folder) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_the_output_appears_only_when_the_block_ends(tmp_path):
    target = tmp_path / "deeper" / "out.csv"
    with atomic_output(target) as partial:
        partial.write_text("a,b\n1,2\n")
        assert partial.parent == target.parent and partial.name == ".out.csv.partial"
        assert not target.exists()  # a reader (or a kill) meanwhile sees no file at all
    assert target.read_text() == "a,b\n1,2\n"
    assert _names(target.parent) == ["out.csv"]


def test_an_error_in_the_block_keeps_the_old_file_and_removes_the_partial(tmp_path):
    target = tmp_path / "out.csv"
    target.write_bytes(b"old,complete\n")
    with pytest.raises(RuntimeError, match="model broke"):
        with atomic_output(target) as partial:
            partial.write_text("new,half")
            raise RuntimeError("model broke")
    assert target.read_bytes() == b"old,complete\n" and _names(tmp_path) == ["out.csv"]


def test_a_stale_partial_from_a_killed_run_is_replaced(tmp_path):
    target = tmp_path / "out.csv"
    partial_path(target).write_text("left by SIGKILL")
    with atomic_output(target) as partial:
        partial.write_text("fresh\n")
    assert target.read_text() == "fresh\n" and _names(tmp_path) == ["out.csv"]


def test_a_replaced_file_keeps_its_permission_bits(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    target.chmod(0o640)
    with atomic_output(target) as partial:
        partial.write_text("new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_text() == "new"


def test_a_folder_is_refused_with_a_file_inside_it_as_the_fix(tmp_path):
    with pytest.raises(InvalidValueError, match=rf"but {tmp_path} is a folder\. Fix: name a file inside it, "
                                                rf"e\.g\. -o {tmp_path}/predictions\.csv"):
        with atomic_output(tmp_path, example_name="predictions.csv"):
            pytest.fail("the block must not run")


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_a_device_or_a_link_to_one_is_refused_and_left_alone(tmp_path):
    link = tmp_path / "out.csv"
    link.symlink_to("/dev/null")
    for path in ("/dev/null", link):
        with pytest.raises(InvalidValueError, match=rf"{path} is a character device; writing the output would "
                                                    "replace it"):
            with atomic_output(path):
                pytest.fail("the block must not run")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and link.is_symlink()
    assert _names(tmp_path) == ["out.csv"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_and_a_socket_are_refused(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(InvalidValueError, match=r"pipe.csv is a FIFO \(named pipe\)"):
        check_output(fifo)
    sock = tmp_path / "s.csv"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sock))
        with pytest.raises(InvalidValueError, match=r"s.csv is a socket"):
            check_output(sock)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISSOCK(os.stat(sock).st_mode)


def test_an_input_under_another_name_is_refused(tmp_path):
    table = tmp_path / "images.csv"
    table.write_text("image\na.png\n")
    hard = tmp_path / "hard.csv"
    os.link(table, hard)
    soft = tmp_path / "soft.csv"
    soft.symlink_to(table)
    for output in (table, hard, soft):
        with pytest.raises(InvalidValueError, match=rf"but {output} is the input {table}; writing it would "
                                                    rf"replace that input\. Fix: choose another output path"):
            check_output(output, [tmp_path / "missing.ckpt", table])
    assert table.read_text() == "image\na.png\n"


def test_a_link_to_a_regular_file_is_written_through(tmp_path):
    real = tmp_path / "shared" / "out.csv"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "out.csv"
    link.symlink_to(real)
    with atomic_output(link) as partial:
        assert partial.parent == real.parent  # beside the real file, so the rename stays atomic
        partial.write_text("new")
    assert link.is_symlink() and real.read_text() == "new"


def test_a_file_where_a_folder_should_be_is_one_clear_error(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(InvalidValueError, match=r"taken is a file\. Fix: choose another output path"):
        with atomic_output(tmp_path / "taken" / "out.csv"):
            pytest.fail("the block must not run")


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left on device"),
                                         (errno.EDQUOT, "Disk quota exceeded")])
def test_a_full_disk_is_a_user_error_that_keeps_the_old_file(tmp_path, code, words):
    target = tmp_path / "out.jsonl"
    target.write_bytes(b'{"old": true}\n')

    def fill_the_disk():
        with atomic_output(target, disk_full_fix="free space or use --somewhere-else") as partial:
            with open(partial, "wb") as handle:
                handle.write(b'{"new"')
                raise OSError(code, os.strerror(code))

    with pytest.raises(DiskFullError) as caught:
        fill_the_disk()
    assert isinstance(caught.value, UserError) and isinstance(caught.value, OSError)
    assert caught.value.errno == code
    message = str(caught.value)
    assert message.startswith(f"{words} while writing {target}; ") and "\n" not in message
    assert f" free in {tmp_path}. The previous out.jsonl is intact" in message
    assert message.endswith("Fix: free space or use --somewhere-else.")
    assert target.read_bytes() == b'{"old": true}\n' and _names(tmp_path) == ["out.jsonl"]


def test_a_full_disk_on_a_first_write_says_nothing_was_written(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(DiskFullError, match=rf"Nothing was written to {target}\. Fix: free some space"):
        with atomic_output(target) as partial:
            partial.write_text("x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert _names(tmp_path) == []


def test_other_os_errors_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(OSError) as caught:
        with atomic_output(tmp_path / "out.csv") as partial:
            partial.write_text("x")
            raise OSError(errno.EIO, "Input/output error")
    assert not isinstance(caught.value, UserError) and _names(tmp_path) == []
