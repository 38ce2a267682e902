"""fileio.py under faults: full disks and read-only folders, text that is not UTF-8, stale temporaries, the run lock.
"""

import errno
import logging
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

import trainSpeakerNet
from conftest import ROOT
from dtdysv.errors import UserError
from dtdysv.runtime import checkpoint as ckpt
from dtdysv.runtime.fileio import atomic_path, atomic_write_text, read_lines, read_text, remove_temporaries, run_lock


def dead_pid():
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---- text files ----------------------------------------------------------------------------------------------------

def test_text_is_read_as_utf8_with_an_optional_bom(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes("\ufeffid1 a.wav\r\nid2 é.wav\rid3 c.wav\n".encode())
    assert read_text(path, "x").startswith("id1")
    assert read_lines(path, "x") == ["id1 a.wav", "id2 é.wav", "id3 c.wav"]


def test_text_that_is_not_utf8_is_an_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"id1 a.wav\nid2 b.wav\nid3 " + "café.wav\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"List file '.*list.txt' is not UTF-8 text: line 3, column 8 holds the "
                                        r"byte 0xe9"):
        read_lines(path, f"List file '{path}'")


# ---- full disk, read-only folder ---------------------------------------------------------------------------------

def test_a_full_disk_is_a_user_error_and_the_old_file_stays(tmp_path, monkeypatch):
    out = tmp_path / "result" / "metrics.json"
    atomic_write_text(out, "old")

    def no_space(self, text):
        self.open("w").write(text[:1])  # a partial temporary, as a full disk leaves one
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pathlib.Path.write_text", no_space)
    with pytest.raises(UserError, match=r"Cannot write '.*metrics.json': No space left on device \[ENOSPC\]\. "
                                        r"Nothing was replaced: .* intact") as err:
        atomic_write_text(out, "new")
    assert not isinstance(err.value, OSError)
    monkeypatch.undo()
    assert out.read_text() == "old" and sorted(p.name for p in out.parent.iterdir()) == ["metrics.json"]


def test_a_failing_cleanup_does_not_hide_the_first_error(tmp_path, monkeypatch, caplog):
    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("dtdysv.runtime.fileio._remove", refuse)
    with caplog.at_level(logging.WARNING), pytest.raises(UserError, match=r"No space left on device"):
        with atomic_path(tmp_path / "x.bin"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert "could not remove the temporary" in caplog.text


def test_a_checkpoint_on_a_full_disk_keeps_the_previous_one(tmp_path, monkeypatch):
    last = tmp_path / "model" / "last.model"
    ckpt.atomic_save({"epoch": 1}, last)

    def no_space(obj, f):
        f.write(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(UserError, match=r"Cannot write '.*last.model': No space left .* checkpoints\) are intact"):
        ckpt.atomic_save({"epoch": 2}, last)
    monkeypatch.undo()
    assert torch.load(last, weights_only=True) == {"epoch": 1} and os.listdir(last.parent) == ["last.model"]


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_folder_that_cannot_be_written_is_a_user_error(tmp_path, monkeypatch, code):
    def refuse(src, dst):
        raise OSError(code, os.strerror(code), str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    message = rf"Cannot write '.*config.yaml': {os.strerror(code)} \[{errno.errorcode[code]}\]"
    with pytest.raises(UserError, match=message):
        atomic_write_text(tmp_path / "config.yaml", "a: 1\n")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_save_path_is_a_user_error(tmp_path):
    folder = tmp_path / "exp"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(UserError, match=r"Cannot write '.*config.yaml': Permission denied"):
            atomic_write_text(folder / "config.yaml", "a: 1\n")
    finally:
        folder.chmod(0o755)


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "out.wav"):
        raise FileNotFoundError(errno.ENOENT, "No such file", str(tmp_path / "source.m4a"))
    with pytest.raises(PermissionError), atomic_path(tmp_path / "out.wav"):  # reading a source, not writing
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "source.m4a"))


# ---- stale temporaries ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("clean", [remove_temporaries, lambda model: ckpt.remove_stale_temporaries(model.parent)])
def test_only_the_temporaries_of_ended_processes_are_removed(tmp_path, clean):
    model = tmp_path / "model"
    model.mkdir()
    gone, mine = dead_pid(), os.getpid()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as other:
        try:
            names = [f".last.model.tmp{gone}", f".last.model.tmp{mine}", f".model000000003.model.tmp{other.pid}",
                     f".det.png.tmp{gone}.png", ".notes.tmpx"]
            for name in names:
                (model / name).write_text("partial")
            (model / f".result.tmp{gone}").mkdir()
            clean(model)
            assert sorted(p.name for p in model.iterdir()) == sorted(
                [f".last.model.tmp{mine}", f".model000000003.model.tmp{other.pid}", ".notes.tmpx"])
        finally:
            other.kill()


# ---- the run lock --------------------------------------------------------------------------------------------------

def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(tmp_path):
    with run_lock(tmp_path / "exp") as lock:
        assert lock.read_text().split() == [str(os.getpid()), socket.gethostname()]
        with pytest.raises(UserError, match=rf"--save_path '.*exp' is in use by process {os.getpid()} on "):
            with run_lock(tmp_path / "exp"):
                pass
        assert lock.is_file()  # the refused taker leaves the holder's lock alone
    assert not lock.exists()  # released at exit
    with run_lock(tmp_path / "exp"):  # and free again
        pass


def test_a_lock_held_by_another_live_process_names_its_pid(tmp_path):
    script = ("import sys, time; sys.path.insert(0, sys.argv[1]); from dtdysv.runtime.fileio import run_lock\n"
              "with run_lock(sys.argv[2]):\n    print('held', flush=True); time.sleep(30)\n")
    root = str(ROOT)
    with subprocess.Popen([sys.executable, "-c", script, root, str(tmp_path)], stdout=subprocess.PIPE,
                          text=True) as other:
        try:
            assert other.stdout.readline().strip() == "held"
            with pytest.raises(UserError, match=rf"in use by process {other.pid} "):
                with run_lock(tmp_path):
                    pass
        finally:
            other.kill()


def test_the_lock_of_an_ended_process_is_taken_over(tmp_path, caplog):
    gone = dead_pid()
    (tmp_path / ".lock").write_text(f"{gone} {socket.gethostname()}\n")
    with caplog.at_level(logging.WARNING), run_lock(tmp_path) as lock:
        assert lock.read_text().split()[0] == str(os.getpid())
    assert f"taking over the lock '{tmp_path / '.lock'}' of process {gone}" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_lock_of_another_host_is_respected(tmp_path):
    (tmp_path / ".lock").write_text(f"{dead_pid()} some-other-host\n")
    with pytest.raises(UserError, match="in use by process .* on some-other-host"):
        with run_lock(tmp_path):
            pass


@pytest.mark.parametrize("mode", [[], ["--eval"]])
def test_training_and_eval_refuse_a_save_path_in_use(tmp_path, caplog, mode):
    save = tmp_path / "exp"
    with run_lock(save), caplog.at_level(logging.ERROR):
        start = time.monotonic()
        assert trainSpeakerNet.main(["--save_path", str(save), "--device", "cpu", *mode]) == 2
        assert time.monotonic() - start < 60  # refused at the start, before any data is read
    assert f"is in use by process {os.getpid()}" in caplog.text
