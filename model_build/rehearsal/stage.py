"""Child process of `python -m model_build rehearse`: one stage in a fresh interpreter, so its peak RSS is its own.

Usage: `python -m model_build.rehearsal.stage STAGE CONFIG_JSON`; the result lands in `<out>/stages/STAGE.json`.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from model_build.rehearsal.pipeline import STAGES, run_stage

    if len(argv) != 2 or argv[0] not in STAGES:
        raise SystemExit(f"usage: python -m model_build.rehearsal.stage {{{','.join(STAGES)}}} CONFIG_JSON")
    return run_stage(argv[0], Path(argv[1]))


if __name__ == "__main__":
    try:
        status = main(sys.argv[1:])
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it, once
        status = 130
    # A Ctrl-C landing while the interpreter shuts down (torch's atexit hooks) printed a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(status)
