#!/usr/bin/env python
"""Write a synthetic e-commerce event log as a bucketed Parquet dataset.

Example: ``python scripts/make_synthetic.py --out data/synthetic --customers 20000``.
Run with ``--help`` for the options; ``seqchurn synth`` takes the same ones.
"""

from __future__ import annotations

import sys

from seqchurn.synth import main

if __name__ == "__main__":
    sys.exit(main())
