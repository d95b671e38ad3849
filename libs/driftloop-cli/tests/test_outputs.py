"""Writing where the user pointed: files are replaced whole or not at all, devices,
FIFOs and `-` are written in place and never replaced (issue 20)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from driftloop_cli.main import app
from driftloop_cli.outputs import open_output, write_output
from support.devices import dev_null_restored, is_dev_null
from typer.testing import CliRunner

MODEL = bytes(range(256)) * 64


def test_a_file_is_replaced_whole_keeping_its_permissions(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old model")
    target.chmod(0o640)
    write_output(target, MODEL)
    assert target.read_bytes() == MODEL
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_missing_folders_are_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "model.onnx"
    write_output(target, MODEL)
    assert target.read_bytes() == MODEL


def test_a_failure_while_writing_leaves_the_old_file_and_no_partial(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old model")
    with pytest.raises(RuntimeError, match="digest"), open_output(target) as handle:
        handle.write(MODEL[:100])
        assert len(os.listdir(tmp_path)) == 2  # the partial, beside the target
        raise RuntimeError("digest mismatch")
    assert target.read_bytes() == b"old model"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_a_failure_before_the_first_write_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), open_output(tmp_path / "model.onnx"):
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_dev_null_stays_the_null_device() -> None:
    with dev_null_restored():
        write_output("/dev/null", MODEL)
        assert is_dev_null()
    assert not [name for name in os.listdir("/dev") if name.startswith("null.")]


def test_a_fifo_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    write_output(fifo, MODEL)
    reader.join(timeout=10)
    assert received == [MODEL]
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert os.listdir(tmp_path) == ["pipe"]


def test_a_symlink_is_followed_and_kept(tmp_path: Path) -> None:
    real = tmp_path / "v3.onnx"
    real.write_bytes(b"old model")
    link = tmp_path / "current.onnx"
    link.symlink_to(real.name)
    write_output(link, MODEL)
    assert link.is_symlink()
    assert real.read_bytes() == MODEL
    assert sorted(os.listdir(tmp_path)) == ["current.onnx", "v3.onnx"]


def test_dash_is_standard_output(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    write_output("-", MODEL)
    assert capsysbinary.readouterr().out == MODEL


def test_dev_stdout_is_the_descriptor_the_shell_gave(tmp_path: Path) -> None:
    """`{ echo hi; driftloop ... -o /dev/stdout; } >> log`: the model follows what
    was there, as with `-`, instead of replacing the file or overwriting its start."""
    log = tmp_path / "log"
    log.write_bytes(b"hi\n")
    write = "import sys; from driftloop_cli.outputs import write_output as w; w(sys.argv[1], b'M')"
    for name in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"):
        with log.open("ab") as shell_redirect:
            subprocess.run([sys.executable, "-c", write, name], stdout=shell_redirect, check=True)
    assert log.read_bytes() == b"hi\nMMM"
    assert os.listdir(tmp_path) == ["log"]


def test_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        write_output(tmp_path, MODEL)
    assert os.listdir(tmp_path) == []


def test_demo_refuses_an_out_that_is_not_a_folder_before_running() -> None:
    with dev_null_restored():
        result = CliRunner().invoke(app, ["demo", "--out", "/dev/null"])
        assert is_dev_null()
    assert result.exit_code == 2
    assert "not a folder" in result.output
