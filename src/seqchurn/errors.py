"""Turn exceptions into the CLI's exit codes: 0 success, 2 invalid input, 1 internal failure.

The mapping from exception to exit code lives in
:func:`seqchurn.utils.run_summary.exit_code_for`, so the exit code of a command and the
``exit_code`` in its run summary always agree. Hydra commands wrap their task in
:func:`exits_on_error`; argparse commands run their body through :func:`run_command`.
"""

from __future__ import annotations

import functools
import logging
import sys
import os
from collections.abc import Callable
from typing import Any, TypeVar

from seqchurn.utils.run_summary import EXIT_INPUT_ERROR, EXIT_INTERNAL_ERROR, EXIT_OK, RunSummary, exit_code_for, track_run

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

__all__ = ["EXIT_INPUT_ERROR", "EXIT_INTERNAL_ERROR", "EXIT_OK", "exits_on_error", "run_command"]


def exits_on_error(fn: F) -> F:
    """Wrap a CLI entry point so that an exception ends the process with its exit code.

    Invalid input (see :func:`exit_code_for`) logs one line and prints ``error: <message>``
    to stderr without a traceback, then exits 2. Any other exception is logged with its
    traceback and exits 1. ``SystemExit`` and ``KeyboardInterrupt`` pass through unchanged.
    Without this wrapper Hydra prints a traceback and exits 1 for both kinds.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            code = exit_code_for(exc)
            if code == EXIT_INPUT_ERROR:
                log.error("invalid input: %s", exc)
                print(f"error: {exc}", file=sys.stderr)
            else:
                log.exception("internal failure: %s: %s", type(exc).__name__, exc)
            raise SystemExit(code) from None

    return wrapper  # type: ignore[return-value]


def run_command(command: str, summary_path: str | os.PathLike, config: Any, body: Callable[[RunSummary], T]) -> tuple[int, T | None]:
    """Run an argparse command's ``body`` inside :func:`track_run`; return the exit code and its result.

    The run summary is written to ``summary_path`` (its folder is created), also when
    ``body`` fails. Invalid input prints one line ``seqchurn <command>: error: <message>``
    to stderr and returns 2; any other exception is logged with its traceback and returns 1.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(summary_path)), exist_ok=True)
        with track_run(command, summary_path, config=config) as summary:
            return EXIT_OK, body(summary)
    except Exception as exc:  # noqa: BLE001 - every failure becomes an exit code
        code = exit_code_for(exc)
        if code == EXIT_INPUT_ERROR:
            log.error("invalid input: %s", exc)
            print(f"seqchurn {command}: error: {exc}", file=sys.stderr)
        else:
            log.error("seqchurn %s failed: %s: %s", command, type(exc).__name__, exc, exc_info=exc)
        return code, None
