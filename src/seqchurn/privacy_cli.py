"""``seqchurn reidentify``: map pseudonymised customer ids in an alerts or scores file back to raw ids.

    seqchurn reidentify --alerts outputs/scores/online_retail_gru/alerts.csv --data online_retail --out mapped.csv

This needs both the key that made the tokens (``SEQCHURN_PSEUDONYM_KEY`` or the data
config's ``privacy.key_file``) and the original log that the data config names. Every
raw id of the log is hashed with the key and matched against the tokens, so neither the
key nor the log alone reverses a token. The output is the input table with a
``raw_customer_id`` column after the token column. It contains personal data, so store it
like the raw log. The run summary beside it (``<out>.run_summary.json``) has counts only.

Exit codes: 0 success, 2 invalid input (the message names the value and the fix), 1 internal failure.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from seqchurn.data.config_file import read_data_config
from seqchurn.data.io import LogSpec, read_customer_ids
from seqchurn.data.schema import InputError
from seqchurn.errors import run_command
from seqchurn.privacy import KEY_ENV_VAR, TOKEN_HEX_DIGITS, TOKEN_PREFIX, reidentify
from seqchurn.utils.atomic import atomic_to_csv, atomic_write_parquet
from seqchurn.utils.run_summary import RunSummary

log = logging.getLogger(__name__)

RAW_ID_COLUMN = "raw_customer_id"
TOKEN_PATTERN = re.compile(rf"{re.escape(TOKEN_PREFIX)}[0-9a-f]{{{TOKEN_HEX_DIGITS}}}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqchurn reidentify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--alerts", required=True, help="CSV or Parquet file with pseudonymised ids (alerts.csv or scores.parquet of `seqchurn score`)")
    parser.add_argument("--data", required=True, help="data config of the original log: a YAML path or a name under conf/data")
    parser.add_argument("--out", required=True, help="output file (.csv or .parquet) with the added raw_customer_id column")
    parser.add_argument("--column", default="customer_id", help="column that contains the tokens (default: customer_id)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a data config value, e.g. --set sources.0.path=/data/log.parquet (repeatable)")
    return parser


def read_table(path: Path, column: str) -> pd.DataFrame:
    """Read a CSV (``column`` as text, so ids keep leading zeros) or Parquet file."""
    if not path.is_file():
        raise InputError("file not found", file=str(path), hint="Pass the alerts.csv or scores.parquet that `seqchurn score` wrote")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        try:
            frame = pd.read_csv(path, dtype={column: "str"}, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read as CSV: {exc}", file=str(path)) from None
    if column not in frame.columns:
        raise InputError(f"column {column!r} not found; the file has {list(frame.columns)}", file=str(path), hint="Set --column")
    return frame


def check_tokens(tokens: pd.Series, file: str, column: str) -> None:
    """Raise InputError for a value that is not a pseudonym token; the value itself is not shown."""
    present = tokens.notna().to_numpy()
    is_token = tokens.astype("str").str.fullmatch(TOKEN_PATTERN.pattern).fillna(False).to_numpy(dtype=bool)
    bad = present & ~is_token
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 1
        # A value that is no token may be a raw id, so it is not repeated in the message.
        raise InputError(
            f"value is not a pseudonym token ({TOKEN_PREFIX} and {TOKEN_HEX_DIGITS} hex digits); the value is not shown",
            file=file, row=row, column=column, hint="Pass a file written by a pseudonymised `seqchurn score` run",
        )


def reidentify_file(args: argparse.Namespace, summary: RunSummary) -> dict[str, Any]:
    """Map the tokens of ``args.alerts`` to raw ids of the log in ``args.data``; write ``args.out``."""
    alerts_path, out_path = Path(args.alerts), Path(args.out)
    if out_path.suffix not in (".csv", ".parquet"):
        raise InputError("the output file must end in .csv or .parquet", file=str(out_path))
    with summary.stage("read"):
        spec = LogSpec.from_config(read_data_config(args.data, args.overrides))
        if spec.pseudonym_key is None:
            raise InputError(
                "no pseudonymisation key is configured, so tokens cannot be mapped back",
                hint=f"Set {KEY_ENV_VAR} or `privacy.key_file` in the data config to the key that made the tokens",
            )
        frame = read_table(alerts_path, args.column)
        tokens = frame[args.column]
        check_tokens(tokens, str(alerts_path), args.column)
        raw_ids = read_customer_ids(spec)
    with summary.stage("match"):
        mapping = reidentify(tokens, raw_ids, spec.pseudonym_key)
        lookup = pd.Series(mapping["raw_id"].to_numpy(), index=mapping["token"].to_numpy())
        raw = pd.Series(lookup.reindex(tokens.to_numpy()).to_numpy(), index=frame.index, dtype="str")
    out = frame.copy()
    out.insert(out.columns.get_loc(args.column) + 1, RAW_ID_COLUMN, raw)
    with summary.stage("write"):
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if out_path.suffix == ".parquet":
            atomic_write_parquet(out, out_path)
        else:
            atomic_to_csv(out, out_path)

    matched = int(mapping["raw_id"].notna().sum())
    details = {
        "input": str(alerts_path),
        "output": str(out_path),
        "rows": len(out),
        "distinct_tokens": len(mapping),
        "matched_tokens": matched,
        "unmatched_tokens": len(mapping) - matched,
        "log_customers": len(raw_ids),
    }
    summary.details.update(details)
    log.info("mapped %d of %d distinct tokens to raw ids; %s contains personal data", matched, len(mapping), out_path)
    return details


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``seqchurn reidentify`` with ``argv``; return the exit code."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    summary_path = out.with_name(out.name + ".run_summary.json")
    code, details = run_command("reidentify", summary_path, vars(args), lambda summary: reidentify_file(args, summary))
    if details:
        print(f"{details['output']}: {details['matched_tokens']} of {details['distinct_tokens']} tokens mapped to raw ids")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
