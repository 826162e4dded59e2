#!/usr/bin/env bash
# Set up, then run the main job on the bundled UCI Online Retail data:
# train a GRU, export it to ONNX, score every customer active on 2011-12-09, write alerts.
# Extra arguments are Hydra overrides for training, e.g. `model=transformer trainer.max_epochs=5`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

RUN=${SEQCHURN_RUN_NAME:-online_retail_gru}
seqchurn train run_name="$RUN" "$@"
seqchurn export run_name="$RUN"
seqchurn score run_name="$RUN" as_of=2011-12-09 progress=false alerts=default
python - "$RUN" <<'PY'
import json, sys
run = sys.argv[1]
m = json.load(open(f"checkpoints/{run}/test_metrics.json"))
model, base = m["model"], m["baseline_recency"]
print(f"\nTest split (cutoff from conf/data/online_retail.yaml), {int(model['n'])} customers, churn rate {model['positive_rate']:.3f}:")
print(f"  {'':22s} {'PR-AUC':>7s} {'AUROC':>7s} {'Brier':>7s}")
print(f"  {'GRU (seqchurn)':22s} {model['average_precision']:7.4f} {model['auroc']:7.4f} {model['brier']:7.4f}")
print(f"  {'recency baseline':22s} {base['average_precision']:7.4f} {base['auroc']:7.4f} {base['brier']:7.4f}")
print(f"Alerts: outputs/scores/{run}/alerts.csv")
print(f"Report: seqchurn report --model-dir checkpoints/{run} --scores outputs/scores/{run}/scores.parquet --out outputs/report/{run}")
PY
