"""Child process of `python -m model_build rehearse`: one stage in a fresh interpreter, so its peak RSS is its own.

Usage: `python -m model_build.rehearsal.stage STAGE CONFIG_JSON`; the result lands in `<out>/stages/STAGE.json`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from model_build.rehearsal.pipeline import STAGES, run_stage

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in STAGES:
        raise SystemExit(f"usage: python -m model_build.rehearsal.stage {{{','.join(STAGES)}}} CONFIG_JSON")
    raise SystemExit(run_stage(sys.argv[1], Path(sys.argv[2])))
