"""A job whose end the test decides: it writes a checkpoint every half second until its gate file exists,
then exits 0. For scenarios that need the job alive until they have seen something, however slow the
machine is (a fixed-length job would be a guess about timing)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main(gate: Path) -> int:
    checkpoints = Path(os.environ["SPOT_CHECKPOINT_DIR"])
    step = 0
    while not gate.exists():
        step += 1
        staged = checkpoints / f".ckpt-{step:08d}.npz.tmp"
        staged.write_bytes(step.to_bytes(8, "big"))
        staged.rename(checkpoints / f"ckpt-{step:08d}.npz")
        time.sleep(0.5)
    print(f"gate opened after {step} checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
