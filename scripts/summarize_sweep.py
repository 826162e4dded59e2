#!/usr/bin/env python
"""Rank the trials of a `seqchurn train -m` sweep by the optimised metric.

Example: ``python scripts/summarize_sweep.py logs/train/multiruns/2025-01-31_12-00-00``
writes summary.csv and summary.md into that folder and prints the Markdown table.
Run with ``--help`` for the options.
"""

from __future__ import annotations

import sys

from seqchurn.sweep_summary import main

if __name__ == "__main__":
    sys.exit(main())
