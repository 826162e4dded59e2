"""The JSON summary that every command writes, and the exit code convention.

Exit codes: 0 success, 1 internal failure, 2 invalid user input (see :func:`exit_code_for`).

A command wraps its work in :func:`track_run`, which writes the summary atomically when
the command ends, also when it fails::

    with track_run("score", out_dir / "run_summary.json", config=cfg) as summary:
        with summary.stage("load"):
            events, report = load_events(cfg.data)
        summary.add_load_report(report)
        ...
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import logging
import math
import os
import platform
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from seqchurn.data.schema import InputError, LoadReport
from seqchurn.utils.atomic import atomic_write_json

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_INPUT_ERROR = 2

REDACTED = "***"
SECRET_KEY_PATTERN = re.compile(r"key|secret|token|password", re.IGNORECASE)
"""Config keys whose values are replaced by ``REDACTED`` (matched anywhere in the key,
case-insensitively, so ``api_token`` and ``pseudonym_key_file`` are redacted too)."""

VERSIONED_PACKAGES = ("seqchurn", "torch", "onnxruntime", "pandas", "pyarrow")


def _config_errors() -> tuple[type[BaseException], ...]:
    """Exception types of the config libraries that mean the user's config is invalid."""
    errors: list[type[BaseException]] = []
    try:
        from omegaconf.errors import OmegaConfBaseException

        errors.append(OmegaConfBaseException)
    except ImportError:
        pass
    try:
        # Not HydraException as a whole: its InstantiationException also wraps bugs in the
        # instantiated classes.
        from hydra.errors import ConfigCompositionException, OverrideParseException

        errors.extend([ConfigCompositionException, OverrideParseException])
    except ImportError:
        pass
    return tuple(errors)


def exit_code_for(exc: BaseException | None) -> int:
    """Return the process exit code for the exception that ended a command (None: success).

    - 0: no exception, or ``SystemExit`` with code 0 or None.
    - 2: invalid user input, which is :class:`InputError` (a config ValueError wrapped by
      :func:`as_input_error` included), ``FileNotFoundError``, omegaconf errors and Hydra's
      config composition and override parse errors.
    - 130: ``KeyboardInterrupt``, the shell convention for SIGINT.
    - 1: anything else, including a plain ValueError, because outside ``as_input_error`` it
      may come from a bug as well as from input.

    NOTE: a missing file that seqchurn itself should have written also gives 2, because
    FileNotFoundError does not say whose path it was.
    """
    if exc is None:
        return EXIT_OK
    if isinstance(exc, SystemExit):
        if exc.code is None:
            return EXIT_OK
        if isinstance(exc.code, int):
            return exc.code
        return EXIT_INTERNAL_ERROR  # sys.exit("message") exits with 1 as well
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, (InputError, FileNotFoundError, *_config_errors())):
        return EXIT_INPUT_ERROR
    return EXIT_INTERNAL_ERROR


@contextmanager
def as_input_error(source: str, errors: tuple[type[Exception], ...] = (ValueError, TypeError)) -> Iterator[None]:
    """Re-raise ``errors`` from the block as :class:`InputError` naming ``source``.

    Wrap the lines that build objects from user config, so that their ValueError (and the
    TypeError of an unknown keyword) count as invalid input::

        with as_input_error("config section `labels`"):
            definition = ChurnDefinition(**cfg.labels)
    """
    try:
        yield
    except InputError:
        raise
    except errors as exc:
        raise InputError(f"invalid {source}: {exc}") from exc


def redact_secrets(config: Any) -> Any:
    """Return a plain copy of ``config`` with the values of secret-looking keys replaced by ``"***"``.

    Accepts mappings, lists, dataclasses and OmegaConf containers. A secret key whose value
    is None keeps None, so the summary still shows that no secret was set.
    """
    config = _to_container(config)
    if isinstance(config, Mapping):
        redacted = {}
        for key, value in config.items():
            if SECRET_KEY_PATTERN.search(str(key)) and value is not None:
                redacted[str(key)] = REDACTED
            else:
                redacted[str(key)] = redact_secrets(value)
        return redacted
    if isinstance(config, (list, tuple)):
        return [redact_secrets(item) for item in config]
    return config


def _to_container(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if type(config).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf
        from omegaconf.errors import InterpolationResolutionError

        try:
            return OmegaConf.to_container(config, resolve=True)
        except InterpolationResolutionError:
            return OmegaConf.to_container(config, resolve=False)
    return config


def _package_version(name: str) -> str | None:
    """Return the installed version of an importable package, without importing it."""
    module = sys.modules.get(name)
    if module is not None and isinstance(getattr(module, "__version__", None), str):
        return module.__version__
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    # Distributions may be named unlike the import, e.g. onnxruntime-gpu for onnxruntime.
    for distribution in importlib.metadata.packages_distributions().get(name, []):
        return importlib.metadata.version(distribution)
    return "unknown (not installed as a distribution)"


def collect_versions(packages: tuple[str, ...] = VERSIONED_PACKAGES) -> dict[str, str]:
    """Return the Python version and the versions of those ``packages`` that are importable."""
    versions = {"python": platform.python_version()}
    for name in packages:
        version = _package_version(name)
        if version is not None:
            versions[name] = version
    return versions


def _jsonable(value: Any) -> Any:
    """Convert a summary value to JSON types; NaN and infinity become None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return _jsonable(value.to_dict(orient="records"))
    if isinstance(value, (list, tuple, set, np.ndarray, pd.Series)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (pd.Timestamp, datetime)):
        return value.isoformat()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunSummary:
    """Record of one command run: inputs, drops, outputs, drift, stage durations and outcome.

    ``config`` is stored with secrets redacted (see :func:`redact_secrets`).
    ``details`` takes command-specific values such as output paths or the model digest.
    """

    command: str
    config: dict = field(default_factory=dict)
    status: str = "running"
    exit_code: int | None = None
    error: str | None = None
    started_at: str = field(default_factory=_now)
    finished_at: str | None = None
    versions: dict[str, str] = field(default_factory=collect_versions)
    rows_read: int = 0
    rows_kept: int = 0
    rows_dropped: dict[str, int] = field(default_factory=dict)
    rows_changed: dict[str, int] = field(default_factory=dict)
    customers_scored: int | None = None
    alerts: int | None = None
    drift: list[dict] | None = None
    durations_s: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config = redact_secrets(self.config)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block and add its wall-clock seconds to ``durations_s[name]``, also when it raises."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.durations_s[name] = self.durations_s.get(name, 0.0) + (time.perf_counter() - start)

    def drop(self, reason: str, count: int) -> None:
        """Record ``count`` rows removed for ``reason``."""
        self.rows_dropped[reason] = self.rows_dropped.get(reason, 0) + int(count)

    def add_load_report(self, report: LoadReport) -> None:
        """Add the rows read, kept, dropped and changed by a loader."""
        self.rows_read += report.rows_read
        self.rows_kept += report.rows_kept
        for reason, count in report.dropped.items():
            self.drop(reason, count)
        for reason, count in report.changed.items():
            self.rows_changed[reason] = self.rows_changed.get(reason, 0) + int(count)

    def set_drift(self, report: pd.DataFrame) -> None:
        """Store a :func:`seqchurn.drift.drift_report` frame as a list of per-feature records."""
        self.drift = _jsonable(report)

    def finish(self, exc: BaseException | None = None) -> int:
        """Record the outcome of the command and return its exit code."""
        self.exit_code = exit_code_for(exc)
        self.status = "ok" if self.exit_code == EXIT_OK else "error"
        self.error = None if exc is None else f"{type(exc).__name__}: {exc}"
        self.finished_at = _now()
        return self.exit_code

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    def write(self, path: str | os.PathLike) -> None:
        """Write the summary as JSON to ``path`` atomically."""
        atomic_write_json(path, self.to_dict(), allow_nan=False)


@contextmanager
def track_run(command: str, path: str | os.PathLike, config: Any = None) -> Iterator[RunSummary]:
    """Yield a :class:`RunSummary` and write it to ``path`` when the block ends.

    An exception from the block is recorded in the summary and then re-raised. A failure to
    write the summary after an exception is logged, so it cannot hide that exception.
    """
    summary = RunSummary(command, config={} if config is None else config)
    try:
        yield summary
    except BaseException as exc:
        summary.finish(exc)
        try:
            summary.write(path)
        except OSError as write_error:
            log.error("Could not write the run summary to %s: %s", path, write_error)
        raise
    summary.finish()
    summary.write(path)
