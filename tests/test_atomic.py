import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import seqchurn.utils.atomic as atomic_module
from seqchurn.utils.atomic import (
    atomic_path,
    atomic_to_csv,
    atomic_write,
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_text,
)

SRC_DIR = Path(atomic_module.__file__).resolve().parents[2]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tmp-"))


def test_atomic_write_bytes_and_text(tmp_path):
    binary = tmp_path / "out.bin"
    text = tmp_path / "out.txt"

    with atomic_write(binary) as handle:
        handle.write(b"\x00\x01payload")
    with atomic_write(text, "w") as handle:
        handle.write("grüße\n")

    assert binary.read_bytes() == b"\x00\x01payload"
    assert text.read_text(encoding="utf-8") == "grüße\n"
    assert leftovers(tmp_path) == []


def test_atomic_write_replaces_existing(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    target.chmod(0o640)

    atomic_write_text(target, "new")

    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_atomic_write_new_file_respects_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(previous)

    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o640


def test_exception_leaves_no_file(tmp_path):
    target = tmp_path / "out.bin"

    with pytest.raises(RuntimeError, match="crash"):
        with atomic_write(target) as handle:
            handle.write(b"partial")
            raise RuntimeError("crash")

    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_exception_keeps_previous_version(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("complete old version")

    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target, "w") as handle:
            handle.write("half of the new")
            raise KeyboardInterrupt

    assert target.read_text() == "complete old version"
    assert leftovers(tmp_path) == []


def test_atomic_write_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "x", "a"):
            pass
    with pytest.raises(ValueError, match="text mode only"):
        with atomic_write(tmp_path / "x", "wb", encoding="utf-8"):
            pass
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_text(tmp_path / "missing" / "x.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_for_libraries(tmp_path):
    target = tmp_path / "table.arrow"

    with atomic_path(target) as temp:
        assert temp.parent == tmp_path
        assert temp.name.endswith(".table.arrow")
        temp.write_bytes(b"written by a library")

    assert target.read_bytes() == b"written by a library"
    assert leftovers(tmp_path) == []


def test_atomic_write_json(tmp_path):
    target = tmp_path / "summary.json"

    atomic_write_json(target, {"name": "Müller", "rows": [1, 2]})

    assert json.loads(target.read_text(encoding="utf-8")) == {"name": "Müller", "rows": [1, 2]}
    assert "Müller" in target.read_text(encoding="utf-8")


def test_atomic_write_json_unserialisable(tmp_path):
    target = tmp_path / "summary.json"

    with pytest.raises(TypeError):
        atomic_write_json(target, {"value": object()})

    assert list(tmp_path.iterdir()) == []


def test_atomic_write_parquet(tmp_path):
    frame = pd.DataFrame({"customer_id": ["a", "b"], "score": [0.1, 0.9]}, index=[5, 7])

    atomic_write_parquet(frame, tmp_path / "frame.parquet")
    atomic_write_parquet(pa.table({"x": [1, 2, 3]}), tmp_path / "table.parquet")

    assert pd.read_parquet(tmp_path / "frame.parquet").equals(frame.reset_index(drop=True))
    assert pq.read_table(tmp_path / "table.parquet").column("x").to_pylist() == [1, 2, 3]
    with pytest.raises(TypeError, match="pyarrow.Table or a pandas.DataFrame"):
        atomic_write_parquet([1, 2], tmp_path / "list.parquet")
    assert leftovers(tmp_path) == []


def test_atomic_to_csv(tmp_path):
    frame = pd.DataFrame({"customer_id": ["00123", "7"], "score": [0.25, 0.5]}, index=[3, 4])

    atomic_to_csv(frame, tmp_path / "scores.csv")
    atomic_to_csv(frame, tmp_path / "scores.csv.gz")

    assert (tmp_path / "scores.csv").read_text() == "customer_id,score\n00123,0.25\n7,0.5\n"
    assert (tmp_path / "scores.csv.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip magic number
    restored = pd.read_csv(tmp_path / "scores.csv.gz", dtype={"customer_id": "str"})
    assert restored.equals(frame.reset_index(drop=True))


CHILD = textwrap.dedent(
    """
    import sys, time
    from seqchurn.utils.atomic import atomic_write

    path, writer = sys.argv[1], sys.argv[2]
    chunk = b"n" * (1 << 20)
    handle_context = atomic_write(path, "wb") if writer == "atomic" else open(path, "wb")
    with handle_context as handle:
        for i in range(600):
            handle.write(chunk)
            handle.flush()
            if i == 3:
                print("written 4 MiB", flush=True)
            time.sleep(0.02)
    """
)


def kill_mid_write(target: Path, writer: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC_DIR), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(target), writer], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        line = child.stdout.readline()
        assert line == b"written 4 MiB\n", child.stderr.read().decode()
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        child.stdout.close()
        child.stderr.close()


@pytest.mark.parametrize("previous", [None, b"previous complete version\n"])
def test_sigkill_mid_write_keeps_target_whole(tmp_path, previous):
    target = tmp_path / "model.bin"
    if previous is not None:
        target.write_bytes(previous)

    kill_mid_write(target, "atomic")

    if previous is None:
        assert not target.exists()
    else:
        assert target.read_bytes() == previous
    # The killed child had no chance to clean up, which shows the kill came mid-write.
    temp_files = leftovers(tmp_path)
    assert len(temp_files) == 1
    assert (tmp_path / temp_files[0]).stat().st_size >= 4 << 20


def test_sigkill_mid_plain_write_corrupts(tmp_path):
    # Control for the test above: the same child with a plain open() leaves a torn file.
    target = tmp_path / "model.bin"
    target.write_bytes(b"previous complete version\n")

    kill_mid_write(target, "plain")

    assert target.read_bytes() != b"previous complete version\n"
    assert target.stat().st_size >= 4 << 20
