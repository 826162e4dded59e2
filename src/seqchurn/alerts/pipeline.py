"""One alerting pass over a scoring run: select, record, deliver.

This is the entry point for the batch scorer, the CLI and the scoring API. Each step is
also usable alone (``select_alerts``, ``AlertStore.record_run``, ``deliver_pending``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from seqchurn.alerts.policy import AlertPolicy, select_alerts
from seqchurn.alerts.sinks import DeliveryReport, Sink, build_sinks, deliver_pending
from seqchurn.alerts.store import AlertStore, RecordResult, RunMeta, Suppression

log = logging.getLogger(__name__)


@dataclass
class AlertSettings:
    """Policy, suppression, store and sinks, built from the ``alerts`` config section.

    The section has the keys ``policy`` (see ``AlertPolicy.from_dict``), ``suppression``
    (``window_days``, ``min_rise``), ``store`` (``url``) and ``sinks`` (see ``build_sinks``).
    """

    policy: AlertPolicy
    suppression: Suppression
    store: AlertStore
    sinks: list[Sink] = field(default_factory=list)

    @classmethod
    def from_dict(cls, config: Mapping, *, environ: Mapping[str, str] | None = None, sleep: Callable[[float], None] | None = None) -> AlertSettings:
        unknown = sorted(set(config) - {"policy", "suppression", "store", "sinks"})
        if unknown:
            raise ValueError(f"Unknown alerts config keys {unknown}; expected some of ['policy', 'suppression', 'store', 'sinks']")
        sink_kwargs = {"environ": environ} if sleep is None else {"environ": environ, "sleep": sleep}
        return cls(
            policy=AlertPolicy.from_dict(config.get("policy") or {}),
            suppression=Suppression(**dict(config.get("suppression") or {})),
            store=AlertStore.from_config(config.get("store") or {}),
            sinks=build_sinks(config.get("sinks") or {}, **sink_kwargs),
        )


ReasonCodes = Callable[[pd.DataFrame], pd.Series]
"""Reason code hook: takes the selected alerts and returns, aligned with their index, one
list of at most three reason strings per alert."""


@dataclass
class AlertRunResult:
    """Outcome of ``process_scores``: the selection, what was recorded and what was delivered."""

    run: RunMeta
    n_scored: int
    selected: pd.DataFrame
    record: RecordResult
    delivery: DeliveryReport | None


def process_scores(
    scores: pd.DataFrame,
    run: RunMeta,
    *,
    policy: AlertPolicy,
    store: AlertStore,
    sinks: Sequence[Sink] = (),
    suppression: Suppression | None = None,
    reason_codes: ReasonCodes | None = None,
    deliver: bool = True,
) -> AlertRunResult:
    """Select alerts from a scores frame, record them and deliver everything pending.

    ``reason_codes``, when given, computes the ``reasons`` column for the selected alerts
    only, replacing any the scores carry. Delivery also retries pending alerts of earlier
    runs. Zero selected alerts is logged as a warning and still records the run, so that
    the store shows the run happened.
    """
    selected = select_alerts(scores, policy, model_threshold=run.threshold)
    if selected.empty:
        log.warning("run %s: no customer out of %d scored passed the alert policy", run.run_id, len(scores))
    elif reason_codes is not None:
        reasons = reason_codes(selected)
        if not isinstance(reasons, pd.Series) or not reasons.index.equals(selected.index):
            raise ValueError("Expected the reason code hook to return a Series aligned with the index of the alerts it was given")
        selected["reasons"] = reasons
    record = store.record_run(
        run,
        selected,
        sinks=[sink.name for sink in sinks],
        suppression=suppression,
        policy=policy.to_dict(),
        n_scored=len(scores),
    )
    delivery = deliver_pending(store, sinks) if deliver and sinks else None
    return AlertRunResult(run=run, n_scored=len(scores), selected=selected, record=record, delivery=delivery)
