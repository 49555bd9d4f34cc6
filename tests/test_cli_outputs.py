"""Output paths and pipes of the command line (issue 9, item 9): checked before the
work starts, written atomically, and a closed pipe is not an error."""

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from bnmat.cli import main


@pytest.fixture
def csv_path(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    y = x[:, 0] - x[:, 1]
    path = tmp_path / "d.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="a,b,y", comments="",
               fmt="%.10g")
    return path


@pytest.fixture
def model(tmp_path, csv_path, capsys):
    out = tmp_path / "m.npz"
    assert main(["fit", str(csv_path), "--target", "y", "--epochs", "2", "--hidden", "4",
                 "--no-progress", "-o", str(out)]) == 0
    capsys.readouterr()
    return out


def _deny_writes_in(monkeypatch, folder):
    """Make creating files in ``folder`` fail as in a read-only folder (tests run as root,
    which ignores permission bits)."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.realpath(dir) == os.path.realpath(folder):
            raise PermissionError(13, "Permission denied", str(folder))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_fit_into_unwritable_folder_fails_before_training(tmp_path, csv_path, capsys,
                                                          monkeypatch):
    # Before: it trained fully, then failed naming a .tmp file, and the model was lost.
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        _deny_writes_in(monkeypatch, locked)
    else:
        locked.chmod(0o500)
    try:
        status = main(["fit", str(csv_path), "--target", "y", "--epochs", "2",
                       "--no-progress", "-o", str(locked / "m.npz")])
    finally:
        locked.chmod(0o700)
    captured = capsys.readouterr()
    assert status == 2
    assert "training rows" not in captured.out          # nothing was trained
    assert "cannot write in the folder" in captured.err and ".tmp" not in captured.err
    assert str(locked / "m.npz") in captured.err


def test_save_error_names_the_requested_file(tmp_path, monkeypatch):
    import bnmat
    x = np.random.default_rng(0).normal(size=(10, 2))
    net = bnmat.Sequential([bnmat.Dense(1)])
    params, state = net.init(x, seed=0)
    _deny_writes_in(monkeypatch, tmp_path)
    with pytest.raises(PermissionError) as info:
        bnmat.save(tmp_path / "m.npz", net, params, state)
    assert info.value.filename == str(tmp_path / "m.npz")


def test_predict_into_missing_folder_says_so(tmp_path, model, csv_path, capsys):
    # Before: "no such file".
    out = tmp_path / "missing_dir" / "out.csv"
    assert main(["predict", str(model), str(csv_path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the folder" in err and "does not exist" in err


def test_predictions_written_atomically(tmp_path, model, csv_path, capsys, monkeypatch):
    out = tmp_path / "out.csv"
    out.write_text("old\n")
    import bnmat.cli._common as cli_fit

    def lines_then_disk_full(name, values):
        yield "y\n1.0\n"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli_fit, "_csv_lines", lines_then_disk_full)
    assert main(["predict", str(model), str(csv_path), "-o", str(out)]) == 2
    monkeypatch.undo()
    assert out.read_text() == "old\n"                       # untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert main(["predict", str(model), str(csv_path), "-o", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "y" and len(out.read_text().splitlines()) == 121


def test_predict_into_closed_pipe_is_silent(tmp_path, model):
    # Before: "[Errno 32] Broken pipe", exit status 2.
    rng = np.random.default_rng(1)
    big = tmp_path / "big.csv"
    np.savetxt(big, rng.normal(size=(30000, 2)), delimiter=",", header="a,b", comments="",
               fmt="%.6f")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run(
        f"'{sys.executable}' -m bnmat predict '{model}' '{big}' | true; "
        "echo status ${PIPESTATUS[0]}",
        shell=True, executable="/bin/bash", capture_output=True, text=True, env=env,
        timeout=300)
    assert "Broken pipe" not in run.stderr and "Traceback" not in run.stderr
    assert run.stderr == ""
    assert run.stdout.strip() in ("status 0", "status 141")
