"""Atomic file writes: a reader sees the old complete file or the new complete file, never a part.

Every writer here writes to a temporary file in the target's directory, flushes and
fsyncs it, and then renames it over the target with ``os.replace``. The rename is atomic
on POSIX and on Windows when both paths are on the same file system, which is the case
because the temporary file sits beside the target. After the rename the directory is fsynced too
(POSIX only), so the new name survives a power loss.

An exception inside the ``with`` block removes the temporary file and leaves the target
untouched. NOTE: a process killed with SIGKILL, or a power loss, can still leave a
temporary file behind. Such files are named ``.tmp-<12 hex digits>.<target name>`` and are
safe to delete. They keep the target's suffix so that libraries which pick a format or a
compression from the file name (``DataFrame.to_csv`` with ``.gz``) see the right one.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

_WRITE_MODES = ("w", "wb")


def _reserve_temp_path(target: Path) -> Path:
    """Create an empty, uniquely named file beside ``target`` and return its path."""
    for _ in range(100):
        candidate = target.with_name(f".tmp-{secrets.token_hex(6)}.{target.name}")
        try:
            # 0o666 lets the umask decide the permissions, as a plain open() would.
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"Could not create a temporary file beside {target}: 100 random names were taken")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(temp: Path, target: Path) -> None:
    """Move a finished, fsynced temporary file over ``target``, keeping the target's permissions."""
    if target.exists():
        os.chmod(temp, stat.S_IMODE(target.stat().st_mode))
    os.replace(temp, target)
    _fsync_directory(target.parent)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to, and move it over ``path`` once the block succeeds.

    For libraries that write to a path themselves, e.g. ``onnx.save(model, tmp)`` or
    ``torch.save(state, tmp)``. The temporary file exists (empty) when the block starts.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"Cannot write {target}: the directory {target.parent} does not exist")
    temp = _reserve_temp_path(target)
    try:
        yield temp
        _fsync_file(temp)
        _commit(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None, newline: str | None = None
) -> Iterator[IO]:
    """Open a temporary file for writing and move it over ``path`` once the block succeeds.

    ``mode`` is ``"wb"`` or ``"w"``. Text mode uses ``encoding`` (default UTF-8) and
    ``newline`` as :func:`open` does.
    """
    if mode not in _WRITE_MODES:
        raise ValueError(f"Expected `mode` to be one of {_WRITE_MODES}, but got {mode!r}")
    if "b" in mode:
        if encoding is not None or newline is not None:
            raise ValueError("`encoding` and `newline` apply to text mode only; use mode='w'")
        open_kwargs: dict[str, Any] = {}
    else:
        open_kwargs = {"encoding": encoding or "utf-8", "newline": newline}

    with atomic_path(path) as temp:
        with open(temp, mode, **open_kwargs) as handle:
            yield handle


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path, "w", encoding=encoding) as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, **dumps_kwargs: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically; ``dumps_kwargs`` go to :func:`json.dumps`.

    The object is serialised before the file is touched, so an unserialisable object
    raises TypeError and leaves no file behind.
    """
    dumps_kwargs.setdefault("ensure_ascii", False)
    text = json.dumps(obj, indent=indent, **dumps_kwargs) + "\n"
    atomic_write_text(path, text)


def atomic_write_parquet(table_or_df: pa.Table | pd.DataFrame, path: str | os.PathLike, **write_kwargs: Any) -> None:
    """Write a pyarrow Table or a pandas DataFrame to a Parquet file atomically.

    A DataFrame is converted with ``pa.Table.from_pandas(df, preserve_index=False)``, so
    its index is not stored; reset the index first to keep it as a column.
    ``write_kwargs`` go to :func:`pyarrow.parquet.write_table`.
    """
    if isinstance(table_or_df, pd.DataFrame):
        table = pa.Table.from_pandas(table_or_df, preserve_index=False)
    elif isinstance(table_or_df, pa.Table):
        table = table_or_df
    else:
        raise TypeError(f"Expected a pyarrow.Table or a pandas.DataFrame, but got {type(table_or_df).__name__}")
    with atomic_path(path) as temp:
        pq.write_table(table, temp, **write_kwargs)


def atomic_to_csv(df: pd.DataFrame, path: str | os.PathLike, *, index: bool = False, **to_csv_kwargs: Any) -> None:
    """Write ``df`` to a CSV file atomically; ``to_csv_kwargs`` go to :meth:`pandas.DataFrame.to_csv`.

    Unlike ``DataFrame.to_csv``, the index is left out unless ``index=True``. Compression
    is inferred from the suffix of ``path`` as usual.
    """
    with atomic_path(path) as temp:
        df.to_csv(temp, index=index, **to_csv_kwargs)
