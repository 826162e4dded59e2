"""Churn alerts: policies, the alert store, delivery sinks and outcome feedback.

- :mod:`~seqchurn.alerts.policy` decides who is alerted and in which risk tier.
- :mod:`~seqchurn.alerts.store` records runs, alerts, delivery status and outcomes in SQL.
- :mod:`~seqchurn.alerts.sinks` delivers pending alerts to files, webhooks and e-mail.
- :mod:`~seqchurn.alerts.feedback` records outcomes and measures past alerts.
- :mod:`~seqchurn.alerts.pipeline` runs select, record and deliver for one scoring run.
"""

from seqchurn.alerts.feedback import FeedbackReport, feedback_report, record_outcome, record_outcomes
from seqchurn.alerts.pipeline import AlertRunResult, AlertSettings, process_scores
from seqchurn.alerts.policy import AlertPolicy, BudgetRule, ExpectedValueRule, RiskTiers, ThresholdRule, select_alerts
from seqchurn.alerts.sinks import (
    DeliveryReport,
    EmailDigestSink,
    FileSink,
    RetryPolicy,
    WebhookSink,
    build_sinks,
    deliver_pending,
    retry,
)
from seqchurn.alerts.store import AlertStore, RecordResult, RunMeta, Suppression

__all__ = [
    "AlertPolicy",
    "AlertRunResult",
    "AlertSettings",
    "AlertStore",
    "BudgetRule",
    "DeliveryReport",
    "EmailDigestSink",
    "ExpectedValueRule",
    "FeedbackReport",
    "FileSink",
    "RecordResult",
    "RetryPolicy",
    "RiskTiers",
    "RunMeta",
    "Suppression",
    "ThresholdRule",
    "WebhookSink",
    "build_sinks",
    "deliver_pending",
    "feedback_report",
    "process_scores",
    "record_outcome",
    "record_outcomes",
    "retry",
    "select_alerts",
]
