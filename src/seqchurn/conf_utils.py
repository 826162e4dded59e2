"""Where the Hydra configs live and the resolvers they use."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

# The package is installed in editable mode from the repository, so conf/ sits two levels
# above this file. SEQCHURN_CONFIG_DIR points elsewhere (e.g. a copied conf/ in a job image).
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = Path(os.environ.get("SEQCHURN_CONFIG_DIR", REPO_ROOT / "conf")).resolve()


def register_resolvers() -> None:
    """Register ``${seqchurn_root:}`` and ``${seqchurn_trial_suffix:...}`` once per process."""
    if not OmegaConf.has_resolver("seqchurn_root"):
        OmegaConf.register_new_resolver("seqchurn_root", lambda: str(REPO_ROOT))
    if not OmegaConf.has_resolver("seqchurn_trial_suffix"):
        # "" for a single run, "_trial<N>" inside a sweep (hydra.job.num is None outside one).
        OmegaConf.register_new_resolver("seqchurn_trial_suffix", lambda num=None: "" if num is None else f"_trial{num}")
