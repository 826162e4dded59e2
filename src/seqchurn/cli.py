"""The ``seqchurn`` command: one sub-command per step.

Hydra steps (train, export, score) take Hydra overrides, e.g.
``seqchurn train data=online_retail model=gru trainer.max_epochs=5`` or ``seqchurn train -m ...``
for a sweep. The other steps take ordinary ``--options``; ``seqchurn <step> --help`` lists them.

Exit codes: 0 success, 2 bad input (the message says what to fix), 1 internal failure.
"""

from __future__ import annotations

import importlib
import sys

# step -> module with a ``main()``; Hydra steps read sys.argv themselves.
STEPS = {
    "train": "seqchurn.train",
    "export": "seqchurn.export",
    "score": "seqchurn.score",
    "synth": "seqchurn.synth",
    "metrics": "seqchurn.analytics.cli",
    "report": "seqchurn.report.cli",
    "alerts": "seqchurn.alerts.cli",
    "serve": "seqchurn.serving.cli",
    "drift": "seqchurn.drift_cli",
    "reidentify": "seqchurn.privacy_cli",
    "benchmark": "seqchurn.benchmark_cli",
}
ARGV_STEPS = {"synth", "metrics", "report", "alerts", "serve", "drift", "reidentify", "benchmark"}

USAGE = """usage: seqchurn <step> [args]

steps:
  train       train a sequence model (Hydra overrides, -m for sweeps)
  export      export a trained model to ONNX with its feature spec
  score       score an event log with an exported model
  synth       write a synthetic partitioned Parquet event log
  metrics     churn, retention, cohort and CLV tables from an event log
  report      HTML evaluation report with charts
  alerts      deliver, retry and record outcomes of alerts
  serve       HTTP scoring API
  drift       compare two logs or scoring runs (PSI)
  reidentify  map pseudonymised ids back to raw ids (needs the key)
"""


def check_overrides(step: str, args: list[str]) -> str | None:
    """Compose a Hydra step's config with ``args``; return the error for bad overrides, else None.

    Hydra itself exits 1 for an unknown key or group option, which is bad input (exit 2).
    Sweeps (-m) and Hydra's own flags are left to Hydra.
    """
    sweep_like = ("," in a or "(" in a or a.startswith(("hparams_search", "hydra.mode")) for a in args)
    if any(a.startswith("-") for a in args) or any(sweep_like):
        # Sweep syntax (a,b / range(...)) composes only under Hydra's multirun.
        return None
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from seqchurn.conf_utils import CONFIG_DIR, register_resolvers

    register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            compose(config_name=step, overrides=args, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as exc:
        return f"invalid override for `seqchurn {step}`: {exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    step, rest = argv[0], argv[1:]
    if step not in STEPS:
        print(f"seqchurn: unknown step {step!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    if step not in ARGV_STEPS:
        error = check_overrides(step, rest)
        if error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    module = importlib.import_module(STEPS[step])
    if step in ARGV_STEPS:
        return int(module.main(rest) or 0)
    # argv[0] is the module file so that launchers that re-run the command (Lightning's DDP
    # starts the other ranks as `python argv[0] ...`) find a real script.
    sys.argv = [module.__file__, *rest]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
