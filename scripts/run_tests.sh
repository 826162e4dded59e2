#!/usr/bin/env bash
# Set up, then run the test suite (everything but GPU tests; a few minutes on 2 cores).
# Extra arguments go to pytest, e.g. `-m "not slow"` or `-k export`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The report test renders the HTML report in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "run_tests: could not install chromium; the browser test will be skipped"
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pytest -m "not gpu" "$@"
