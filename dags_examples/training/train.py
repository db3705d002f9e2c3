"""Resumable-style training script: resumes by itself from the newest checkpoint in $SPOT_CHECKPOINT_DIR.

On an interruption notice (SIGTERM or $SPOT_NOTICE_FILE) it saves the exact current state, even
mid-epoch, and exits with code 143; the next attempt continues bit-identically from there.

    python train.py --data DATA.npz --output MODEL.npz [--epochs 12] [--seed 0] [--hidden 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a file: make `import loop, mlp` work

import loop

from airflow_spot_provider import resumable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    loop.add_arguments(parser, default_epochs=12)
    args = loop.parse_args(parser, argv)
    return loop.run(args, resumable.latest_checkpoint(pattern=loop.CHECKPOINT_PATTERN))


if __name__ == "__main__":
    sys.exit(main())
