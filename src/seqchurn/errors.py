"""Turn exceptions into the CLI's exit codes: 2 for bad input, 1 for internal failures."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from seqchurn.data.schema import InputError

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


def exits_on_error(fn: F) -> F:
    """Wrap a CLI task: bad input logs one clear line and exits 2; other errors exit 1.

    Hydra would otherwise print a traceback and exit 1 for both.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (InputError, FileNotFoundError) as exc:
            log.error("bad input: %s", exc)
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            raise
        except Exception:
            log.exception("internal failure")
            raise SystemExit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]
