"""``seqchurn serve``: run the scoring API on uvicorn.

    SEQCHURN_API_KEYS=key1,key2 seqchurn serve --model-dir checkpoints/online_retail_gru --port 8000

API keys come from the environment variable named by ``--api-key-env`` (comma-separated)
or from ``--api-key-file`` (one key per line, ``#`` starts a comment), never from the
command line, where other users could read them. Without keys the server starts only
with ``--no-auth`` and a loopback host.

Risk tiers, the threshold override, reason settings and the alert store (for
``/v1/outcomes``) come from the alerts config (``--alerts-config``, default ``default``).
``--store`` replaces the store URL, and ``--store none`` turns outcome recording off.

Exit codes: 0 after a clean shutdown, 2 invalid input, 1 internal failure.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from seqchurn.alerts.cli import load_config
from seqchurn.alerts.policy import AlertPolicy
from seqchurn.alerts.reasons import ReasonSettings
from seqchurn.data.schema import InputError
from seqchurn.serving.app import DEFAULT_MAX_BODY_BYTES, ServeSettings, create_app
from seqchurn.utils.run_summary import EXIT_OK, as_input_error, exit_code_for

log = logging.getLogger(__name__)

DEFAULT_KEY_ENV = "SEQCHURN_API_KEYS"


def read_api_keys(env_name: str | None, key_file: str | None, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """Return the API keys from an environment variable (comma-separated) and a key file.

    Errors name the variable or file, never a key.
    """
    environ = os.environ if environ is None else environ
    keys: list[str] = []
    if env_name and environ.get(env_name):
        keys += [key.strip() for key in environ[env_name].split(",") if key.strip()]
    if key_file:
        path = Path(key_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise InputError(f"cannot read the API key file: {error.strerror}", file=str(path)) from None
        file_keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not file_keys:
            raise InputError("the API key file contains no key", file=str(path), hint="Write one key per line")
        keys += file_keys
    return tuple(dict.fromkeys(keys))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_settings(args: argparse.Namespace) -> ServeSettings:
    """Build the serve settings from the command line and the alerts config."""
    keys = read_api_keys(args.api_key_env, args.api_key_file)
    if not keys and not args.no_auth:
        raise InputError(
            f"no API key configured (environment variable {args.api_key_env} is unset or empty and no --api-key-file)",
            hint="Set the variable or pass --api-key-file; --no-auth serves without keys on a loopback host only",
        )
    if keys and args.no_auth:
        raise InputError("--no-auth was given, but API keys are configured", hint="Drop --no-auth, or unset the keys")
    if args.no_auth and not is_loopback(args.host):
        raise InputError(f"--no-auth is allowed only on a loopback host, not on {args.host!r}", hint="Configure API keys to listen on other addresses")

    config = load_config("alerts", args.alerts_config)
    with as_input_error("alerts config `policy`"):
        policy = AlertPolicy.from_dict(config.get("policy") or {})
    with as_input_error("alerts config `reasons`"):
        reasons = ReasonSettings.from_dict(config.get("reasons"))
    store_url = args.store if args.store is not None else (config.get("store") or {}).get("url")
    if store_url in ("none", ""):
        store_url = None
    with as_input_error("serve options"):
        return ServeSettings(
            model_dir=Path(args.model_dir),
            api_keys=keys,
            tiers=policy.tiers,
            threshold_override=policy.threshold.override if policy.threshold is not None else None,
            reasons=reasons,
            store_url=store_url,
            max_body_bytes=args.max_body_bytes,
            intra_op_threads=args.threads,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqchurn serve", description="Run the HTTP scoring API.")
    parser.add_argument("--model-dir", required=True, help="folder with model.onnx and model.json from `seqchurn export`")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    parser.add_argument("--api-key-env", default=DEFAULT_KEY_ENV, help=f"environment variable with comma-separated API keys (default {DEFAULT_KEY_ENV})")
    parser.add_argument("--api-key-file", default=None, help="file with one API key per line")
    parser.add_argument("--no-auth", action="store_true", help="serve without API keys (loopback hosts only)")
    parser.add_argument("--alerts-config", default="default", help="alerts config for tiers, reasons and the store: a name under conf/alerts/ or a YAML file")
    parser.add_argument("--store", default=None, help="alert store URL or SQLite path for /v1/outcomes; `none` turns outcome recording off")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help=f"largest request body accepted, in bytes (default {DEFAULT_MAX_BODY_BYTES})")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per inference; requests run in parallel threads besides (default 1)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level (default INFO)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``seqchurn serve`` until interrupted; return the exit code."""
    import uvicorn

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = build_settings(args)
        app = create_app(settings=settings)
    except Exception as error:  # noqa: BLE001 - every failure becomes an exit code
        code = exit_code_for(error)
        if code == 2:
            print(f"error: {error}", file=sys.stderr)
        else:
            log.exception("seqchurn serve failed to start")
        return code
    log.info("serving model %s on http://%s:%d (%d API keys)", app.state.model.version, args.host, args.port, len(settings.api_keys))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), timeout_graceful_shutdown=10)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
