"""Turn exceptions into the CLI's exit codes: 0 success, 2 invalid input, 1 internal failure.

The mapping from exception to exit code lives in
:func:`seqchurn.utils.run_summary.exit_code_for`, so the exit code of a command and the
``exit_code`` in its run summary always agree.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from seqchurn.utils.run_summary import EXIT_INPUT_ERROR, EXIT_INTERNAL_ERROR, EXIT_OK, exit_code_for

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["EXIT_INPUT_ERROR", "EXIT_INTERNAL_ERROR", "EXIT_OK", "exits_on_error"]


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
