"""Reentrant-style training script: resumes only from the checkpoint it is given.

The operator passes the restored checkpoint (e.g. ``--from-checkpoint "$SPOT_RESUME_FROM"``; an
empty value means a fresh start). Checkpoints are written to $SPOT_CHECKPOINT_DIR like train.py.

    python train_reentrant.py --data DATA.npz --output MODEL.npz [--from-checkpoint CKPT.npz] [--epochs 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a file: make `import loop, mlp` work

import loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    loop.add_arguments(parser, default_epochs=4)
    parser.add_argument("--from-checkpoint", default="", metavar="PATH",
                        help="checkpoint to resume from (default or empty: start fresh)")
    args = loop.parse_args(parser, argv)
    return loop.run(args, Path(args.from_checkpoint) if args.from_checkpoint else None)


if __name__ == "__main__":
    sys.exit(main())
