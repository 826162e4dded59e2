"""``seqchurn alerts``: alert a scoring run, retry deliveries, record outcomes, report on past alerts.

The batch scorer calls :func:`run_alerts` after it has written the scores; the sub-commands
work on the alert store afterwards::

    seqchurn alerts run --scores outputs/scores/online_retail_gru/scores.parquet \\
        --model-dir checkpoints/online_retail_gru --data online_retail
    seqchurn alerts retry [--include-failed]
    seqchurn alerts outcome --customer 12346 --outcome contacted
    seqchurn alerts outcome --file outcomes.csv
    seqchurn alerts report --data online_retail --since 2011-09-01

Settings come from an alerts config (``--config``: a name under ``conf/alerts/`` or a YAML
file, ``default`` by default). ``--store`` replaces its store URL. The default store is the
SQLite file ``outputs/alerts/alerts.db`` under the repository root.

Exit codes: 0 success, 2 invalid input (the message names what to fix), 1 internal failure
or, for ``run`` and ``retry``, deliveries that are still pending or failed after the pass.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import OmegaConf

from seqchurn.alerts.feedback import OUTCOMES, feedback_report, record_outcome, record_outcomes
from seqchurn.alerts.pipeline import AlertSettings, process_scores
from seqchurn.alerts.reasons import ReasonSettings, reason_hook
from seqchurn.alerts.sinks import retry
from seqchurn.alerts.store import AlertStore, RunMeta, to_date
from seqchurn.conf_utils import CONFIG_DIR, register_resolvers
from seqchurn.data.io import LogSpec, canonicalise, finalise, iter_source_tables, load_events
from seqchurn.data.labels import ChurnDefinition, to_utc
from seqchurn.data.schema import InputError, LoadReport
from seqchurn.utils.run_summary import EXIT_INTERNAL_ERROR, EXIT_OK, as_input_error, exit_code_for

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "default"
OWN_KEYS = ("enabled", "reasons")
"""Keys of the alerts config read here; the others go to ``AlertSettings.from_dict``."""


# ---- configuration ------------------------------------------------------------------------------


def load_config(group: str, name_or_path: str | Path) -> dict[str, Any]:
    """Load ``conf/<group>/<name>.yaml``, or a YAML file, with ``${paths.*}`` resolved.

    Interpolations resolve against ``conf/paths/default.yaml``, as they do when the same
    file is part of a Hydra config. Raises ``InputError`` for a name or file not found.
    """
    register_resolvers()
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = CONFIG_DIR / group / f"{text}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        raise InputError(f"{group} config not found", file=str(path), hint=f"Give a YAML file or one of the names {available}")
    with as_input_error(f"{group} config {path}", errors=(ValueError, TypeError, yaml.YAMLError)):
        root = OmegaConf.create({"paths": OmegaConf.load(CONFIG_DIR / "paths" / "default.yaml"), group: OmegaConf.load(path)})
        config = OmegaConf.to_container(root[group], resolve=True)
    if not isinstance(config, dict):
        raise InputError(f"expected a mapping in the {group} config", file=str(path), value=config)
    return config


def _plain(config: Mapping | Any) -> dict[str, Any]:
    if OmegaConf.is_config(config):
        return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    return dict(config or {})


def build_settings(alerts_cfg: Mapping, *, store_url: str | None = None, environ: Mapping[str, str] | None = None) -> tuple[AlertSettings, ReasonSettings]:
    """Build the alert and reason settings from an alerts config; ``store_url`` replaces ``store.url``.

    Invalid values raise ``InputError`` naming the config section.
    """
    config = _plain(alerts_cfg)
    pipeline_config = {key: value for key, value in config.items() if key not in OWN_KEYS}
    if store_url:
        pipeline_config["store"] = {**(pipeline_config.get("store") or {}), "url": store_url}
    with as_input_error("alerts config `reasons`"):
        reasons = ReasonSettings.from_dict(config.get("reasons"))
    with as_input_error("alerts config"):
        settings = AlertSettings.from_dict(pipeline_config, environ=environ)
    return settings, reasons


def make_run_id(model_version: str, as_of: dt.date | str | pd.Timestamp, shard: tuple[int, int] | None = None) -> str:
    """Return the deterministic run id ``<model_version>:<as_of date>[:shard-<i>-of-<n>]``.

    Scoring the same model as of the same date again gives the same id, so the alert store
    adds no duplicate alerts.
    """
    run_id = f"{model_version}:{to_date(as_of):%Y-%m-%d}"
    if shard is not None:
        run_id += f":shard-{shard[0]}-of-{shard[1]}"
    return run_id


def read_customer_events(log_spec: LogSpec, customer_ids: Sequence[str]) -> pd.DataFrame:
    """Read the canonical events of some customers from a log, one source piece at a time.

    Uses the batch scorer's loader steps, so the events are the ones it scored. Memory
    contains one piece at a time plus the rows of the requested customers.
    """
    requested = pd.Index(pd.unique(pd.Series(customer_ids, dtype="str").to_numpy()))
    report, parts = LoadReport(), []
    for source in log_spec.sources:
        for table, file, first_row in iter_source_tables(source):
            frame = canonicalise(table, source, log_spec, report, file=file, first_row=first_row)
            parts.append(frame.loc[frame["customer_id"].isin(requested).to_numpy()])
    events = finalise(parts, report)
    log.info("read %d events of %d customers for reason codes", len(events), events["customer_id"].nunique())
    return events


# ---- the scorer's entry point -------------------------------------------------------------------


def run_alerts(
    scores: pd.DataFrame,
    events: pd.DataFrame | LogSpec | None,
    model,
    as_of: str | dt.date | pd.Timestamp,
    alerts_cfg: Mapping,
    *,
    shard: tuple[int, int] | None = None,
    deliver: bool = True,
    store_url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Select, explain, record and deliver the alerts of one scoring run; return a JSON-ready summary.

    ``scores`` is the ranked frame of :func:`seqchurn.score.rank_scores`, ``model`` the
    :class:`seqchurn.score.LoadedModel` that scored it and ``alerts_cfg`` the alerts config
    (``conf/alerts/default.yaml`` as a mapping or DictConfig). ``events`` gives the
    histories for the reason codes: a canonical event frame, or the log's ``LogSpec``, from
    which only the alerted customers' events are read again. With ``None`` the reasons of
    ``scores["reasons"]`` are kept if the column exists, else alerts have no reasons.
    ``as_of`` must be a date (midnight UTC). The run id is :func:`make_run_id`.
    """
    config = _plain(alerts_cfg)
    if not config.get("enabled", True):
        log.info("alerts are disabled in the alerts config (enabled: false)")
        return {"status": "disabled"}
    started = time.perf_counter()
    settings, reason_settings = build_settings(config, store_url=store_url, environ=environ)
    with as_input_error("as_of"):
        run = RunMeta(run_id=make_run_id(model.version, as_of, shard), model_version=model.version, as_of=as_of, threshold=model.threshold)

    seconds: dict[str, float] = {}
    reason_codes = None
    if events is not None:
        reason_codes = _timed_reason_codes(events, model, to_utc(as_of), reason_settings, seconds)
    elif "reasons" not in scores.columns:
        log.warning("run %s: no events given, so alerts carry no reasons", run.run_id)

    try:
        result = process_scores(
            scores,
            run,
            policy=settings.policy,
            store=settings.store,
            sinks=settings.sinks,
            suppression=settings.suppression,
            reason_codes=reason_codes,
            deliver=deliver,
        )
    finally:
        settings.store.close()

    selected = result.selected
    with_reasons = int(selected["reasons"].map(len).gt(0).sum()) if "reasons" in selected.columns else 0
    summary = {
        "status": "ok",
        "run_id": run.run_id,
        "model_version": run.model_version,
        "as_of": run.as_of.isoformat(),
        "threshold": run.threshold,
        "store": repr(settings.store),
        "sinks": [sink.name for sink in settings.sinks],
        "n_scored": result.n_scored,
        "n_selected": result.record.n_selected,
        "n_suppressed": result.record.n_suppressed,
        "n_new": result.record.n_new,
        "n_existing": result.record.n_existing,
        "n_with_reasons": with_reasons,
        "tiers": {str(k): int(v) for k, v in selected["tier"].value_counts().sort_index().items()} if len(selected) else {},
        "delivery": None,
        "seconds": {**seconds, "total": time.perf_counter() - started},
    }
    if result.delivery is not None:
        summary["delivery"] = {**result.delivery.to_dict(), "complete": result.delivery.complete}
        if not result.delivery.complete:
            summary["status"] = "delivery_incomplete"
    log.info(
        "run %s: %d alerts selected, %d suppressed, %d new, %d with reasons",
        run.run_id,
        summary["n_selected"],
        summary["n_suppressed"],
        summary["n_new"],
        with_reasons,
    )
    return summary


def _timed_reason_codes(events: pd.DataFrame | LogSpec, model, as_of: pd.Timestamp, settings: ReasonSettings, seconds: dict[str, float]):
    """Return the reason code hook for ``process_scores``; it adds its durations to ``seconds``."""

    def reason_codes(alerts: pd.DataFrame) -> pd.Series:
        started = time.perf_counter()
        history = read_customer_events(events, alerts["customer_id"]) if isinstance(events, LogSpec) else events
        seconds["read_events"] = time.perf_counter() - started
        started = time.perf_counter()
        reasons = reason_hook(history, model, as_of, settings=settings)(alerts)
        seconds["reasons"] = time.perf_counter() - started
        return reasons

    return reason_codes


# ---- sub-commands ---------------------------------------------------------------------------------


def _open_store(args: argparse.Namespace) -> tuple[AlertSettings, ReasonSettings]:
    return build_settings(load_config("alerts", args.config), store_url=args.store)


def _churn_definition(args: argparse.Namespace, data_cfg: Mapping) -> ChurnDefinition:
    if args.model_dir:
        from seqchurn.score import load_model

        return load_model(args.model_dir).churn
    churn = dict(data_cfg.get("churn") or {})
    with as_input_error("data config section `churn`"):
        return ChurnDefinition(**{**churn, "activity_types": tuple(churn.get("activity_types", ("purchase",)))})


def _log_spec(data: str) -> LogSpec:
    return LogSpec.from_config(load_config("data", data))


def cmd_run(args: argparse.Namespace) -> int:
    from seqchurn.score import load_model

    scores_path = Path(args.scores)
    if not scores_path.is_file():
        raise InputError("scores file not found", file=str(scores_path), hint="Run `seqchurn score` first, or fix --scores")
    scores = pd.read_parquet(scores_path)
    model = load_model(args.model_dir)
    as_of = args.as_of
    if as_of is None:
        if "as_of" not in scores.columns or scores["as_of"].nunique() != 1:
            raise InputError("cannot tell the as-of date from the scores file", file=str(scores_path), column="as_of", hint="Pass --as-of YYYY-MM-DD")
        as_of = scores["as_of"].iloc[0]
    if "model_version" in scores.columns and set(scores["model_version"].astype(str)) != {model.version}:
        raise InputError(
            f"the scores were made by model {sorted(set(scores['model_version'].astype(str)))}, not by {model.version}",
            file=str(scores_path), column="model_version", hint="Pass the --model-dir that scored them",
        )
    shard = None
    if args.shard:
        from seqchurn.data.sharding import parse_shard

        shard = parse_shard(args.shard)
    events = _log_spec(args.data) if args.data else None
    summary = run_alerts(
        scores, events, model, as_of, load_config("alerts", args.config), shard=shard, deliver=not args.no_deliver, store_url=args.store
    )
    print(json.dumps(summary, indent=2))
    return EXIT_OK if summary["status"] in ("ok", "disabled") else EXIT_INTERNAL_ERROR


def cmd_retry(args: argparse.Namespace) -> int:
    settings, _ = _open_store(args)
    try:
        if not settings.sinks:
            raise InputError("the alerts config has no sinks to deliver to", file=str(args.config), hint="Configure `sinks`")
        report = retry(settings.store, settings.sinks, include_failed=args.include_failed, run_id=args.run_id)
    finally:
        settings.store.close()
    print(json.dumps({**report.to_dict(), "complete": report.complete}, indent=2))
    return EXIT_OK if report.complete else EXIT_INTERNAL_ERROR


def cmd_outcome(args: argparse.Namespace) -> int:
    settings, _ = _open_store(args)
    try:
        if args.file:
            path = Path(args.file)
            if not path.is_file():
                raise InputError("outcomes file not found", file=str(path))
            table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
            alert_ids = record_outcomes(settings.store, table, source=str(path))
        else:
            if not args.outcome:
                raise InputError("--outcome is required with --alert-id or --customer", hint=f"Use one of {list(OUTCOMES)}")
            alert_ids = record_outcome(
                settings.store, args.outcome, alert_id=args.alert_id, customer_id=args.customer, as_of=args.as_of, at=args.at, note=args.note
            )
    finally:
        settings.store.close()
    print(json.dumps({"updated_alerts": alert_ids}, indent=2))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    data_cfg = load_config("data", args.data)
    churn = _churn_definition(args, data_cfg)
    events, load_report = load_events(LogSpec.from_config(data_cfg))
    settings, _ = _open_store(args)
    try:
        report = feedback_report(
            settings.store, events, churn, run_id=args.run_id, since=args.since, until=args.until, observed_until=args.observed_until
        )
    finally:
        settings.store.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.to_text())
    return EXIT_OK


# ---- argument parsing ---------------------------------------------------------------------------


def _date(text: str) -> dt.date:
    try:
        return to_date(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqchurn alerts", description="Alert a scoring run, retry deliveries, record outcomes, report on past alerts.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", default=DEFAULT_CONFIG, help="alerts config: a name under conf/alerts/ or a YAML file (default: default)")
        sub.add_argument("--store", default=None, help="alert store: SQLAlchemy URL or SQLite file path (default: store.url of the config)")

    run = commands.add_parser("run", help="select, explain, record and deliver the alerts of a scores file")
    common(run)
    run.add_argument("--scores", required=True, help="scores.parquet written by `seqchurn score`")
    run.add_argument("--model-dir", required=True, help="folder with model.onnx and model.json of the model that scored")
    run.add_argument("--data", default=None, help="data config (name under conf/data/ or YAML file) to read the histories for reason codes; without it alerts get no reasons")
    run.add_argument("--as-of", type=_date, default=None, help="as-of date of the scores (default: the as_of column of the scores)")
    run.add_argument("--shard", default=None, help="i/n when the scores are one shard of a sharded run")
    run.add_argument("--no-deliver", action="store_true", help="record the alerts but deliver nothing")
    run.set_defaults(handler=cmd_run)

    retry_parser = commands.add_parser("retry", help="deliver pending alerts again")
    common(retry_parser)
    retry_parser.add_argument("--include-failed", action="store_true", help="also resend deliveries marked failed (permanent errors)")
    retry_parser.add_argument("--run-id", default=None, help="only this run")
    retry_parser.set_defaults(handler=cmd_retry)

    outcome = commands.add_parser("outcome", help="record contacted, retained or churned for alerts")
    common(outcome)
    target = outcome.add_mutually_exclusive_group(required=True)
    target.add_argument("--alert-id", default=None, help="the alert's id")
    target.add_argument("--customer", default=None, help="customer id: the customer's alerts at --as-of, or at their latest as-of date")
    target.add_argument("--file", default=None, help="CSV with columns outcome and alert_id or customer_id, optional as_of, at, note")
    outcome.add_argument("--outcome", choices=OUTCOMES, default=None, help="what happened")
    outcome.add_argument("--as-of", type=_date, default=None, help="with --customer: the as-of date of the alert")
    outcome.add_argument("--at", default=None, help="when it happened, ISO date or time (default: now, UTC)")
    outcome.add_argument("--note", default=None, help="free text stored with the outcome")
    outcome.set_defaults(handler=cmd_outcome)

    report = commands.add_parser("report", help="precision and save rate of past alerts against the event log")
    common(report)
    report.add_argument("--data", required=True, help="data config (name under conf/data/ or YAML file) with the events after the alerts")
    report.add_argument("--model-dir", default=None, help="take the churn definition from this model (default: the data config's `churn` section)")
    report.add_argument("--since", type=_date, default=None, help="first as-of date to include")
    report.add_argument("--until", type=_date, default=None, help="last as-of date to include")
    report.add_argument("--run-id", default=None, help="only this run")
    report.add_argument("--observed-until", default=None, help="time up to which the log is complete (default: its last event)")
    report.add_argument("--json", action="store_true", help="print JSON instead of text")
    report.set_defaults(handler=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``seqchurn alerts``; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        logging.getLogger().setLevel(args.log_level)
    try:
        return int(args.handler(args))
    except Exception as error:  # noqa: BLE001 - every failure becomes an exit code
        code = exit_code_for(error)
        if code == 2:
            log.error("invalid input: %s", error)
            print(f"error: {error}", file=sys.stderr)
        else:
            log.exception("seqchurn alerts %s failed", args.command)
        return code


if __name__ == "__main__":
    sys.exit(main())
