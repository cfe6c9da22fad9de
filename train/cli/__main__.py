"""``python -m train.cli …``: the `cloud` command (how the launchers start ranks)."""

from __future__ import annotations

import sys

from train.cli.parser import main

sys.exit(main())
