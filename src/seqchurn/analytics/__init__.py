"""Customer-base analytics: churn and retention by period, cohorts, CLV and RFM segments."""

from seqchurn.analytics.clv import GammaGammaFit, fit_gamma_gamma, lifetimes_expected_purchases, predict_clv, rfm_summary
from seqchurn.analytics.periods import PERIOD_COLUMNS, cohort_retention, period_metrics
from seqchurn.analytics.segments import Segmentation, segment_customers, segment_summary
from seqchurn.analytics.tables import to_markdown, write_table

__all__ = [
    "PERIOD_COLUMNS",
    "GammaGammaFit",
    "Segmentation",
    "cohort_retention",
    "fit_gamma_gamma",
    "lifetimes_expected_purchases",
    "period_metrics",
    "predict_clv",
    "rfm_summary",
    "segment_customers",
    "segment_summary",
    "to_markdown",
    "write_table",
]
