"""The scripts a cloud VM boots with: one for an attempt, one for a backup-save helper.

Both are plain bash with every value quoted ("No credentials leave Airflow" in docs/design.md): commands and
paths reach the VM as JSON files and quoted words, never interpolated into shell code. They carry no
credentials: the VM reaches the store with its own instance role / service account. Everything lives under
``$SPOT_ROOT`` (``/var/lib/airflow-spot`` on a real VM); the attempt's data disk is mounted at ``$SPOT_ROOT/data``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import Any

from airflow_spot_provider import __version__


#: ``pip install`` runs for a VM whose image does not have the agent yet: the agent needs fsspec and the
#: store's filesystem, not Airflow (hence ``--no-deps`` for this package).
def default_agent_install(store_package: str) -> list[list[str]]:
    return [["fsspec", store_package], ["--no-deps", f"airflow-spot-provider=={__version__}"]]


_PREAMBLE = """#!/bin/bash
# airflow-spot-provider {role} bootstrap. No secrets here: storage is reached with the VM's own identity.
set -uo pipefail
SPOT_ROOT="${{SPOT_ROOT:-/var/lib/airflow-spot}}"
mkdir -p "$SPOT_ROOT" && cd "$SPOT_ROOT" || exit 1
PY={python}

ebs_nvme_data_disk() {{  # Nitro: an EBS volume is an NVMe disk whose model says so (instance store says otherwise)
  local root_disk sys name
  root_disk=$(lsblk -no PKNAME "$(findmnt -no SOURCE /)" 2>/dev/null || true)
  for sys in /sys/block/nvme*n1; do
    [ -e "$sys" ] || continue
    name=$(basename "$sys")
    [ "$name" = "$root_disk" ] && continue
    grep -q "Elastic Block Store" "$sys/device/model" 2>/dev/null || continue
    ls "$sys" | grep -q "^${{name}}p" && continue  # partitioned: a disk of the image, not the data volume
    echo "/dev/$name"; return 0
  done
}}

mount_data() {{  # $1: seconds to wait for the disk, $2: mount options
  local target="$SPOT_ROOT/data" waited=0 dev=""
  while [ "$waited" -le "$1" ]; do
    if [ -L "$target" ] || mountpoint -q "$target" 2>/dev/null; then return 0; fi
    for candidate in {devices} $(ebs_nvme_data_disk); do
      if [ -b "$candidate" ]; then dev="$candidate"; break 2; fi
    done
    sleep 1; waited=$((waited + 1))
  done
  if [ -z "$dev" ]; then
    echo "WARNING: no data disk appeared in $1 s: checkpoints stay on the boot disk, which backup-save cannot read"
    mkdir -p "$target"; return 0
  fi
  if [ "$2" = "rw" ] && ! blkid "$dev" >/dev/null 2>&1; then mkfs.ext4 -q "$dev"; fi
  mkdir -p "$target" && mount -o "$2" "$dev" "$target"
}}
"""


def _install(agent_install: Sequence[Sequence[str]], requirements: Sequence[str]) -> str:
    runs = [*agent_install, *([requirements] if requirements else [])]
    return "\n".join('"$PY" -m pip install --quiet ' + " ".join(shlex.quote(a) for a in args) for args in runs if args)


def _json_file(name: str, data: dict[str, Any]) -> str:
    # A quoted heredoc: nothing in it is expanded by the shell. json.dumps puts it on one line.
    return f"cat > \"$SPOT_ROOT/{name}\" <<'SPOT_JSON_EOF'\n{json.dumps(data, sort_keys=True)}\nSPOT_JSON_EOF\n"


def attempt_script(agent_config: dict[str, Any], *, python: str, devices: Sequence[str],
                   agent_install: Sequence[Sequence[str]], requirements: Sequence[str], mount_wait: int = 60) -> str:
    """Boot an attempt: mount the data disk, install what was declared, run the agent, power off."""
    return "\n".join([
        _PREAMBLE.format(role="attempt", python=shlex.quote(python),
                         devices=" ".join(shlex.quote(d) for d in devices)),
        f"mount_data {int(mount_wait)} rw",
        _install(agent_install, requirements),
        _json_file("agent.json", agent_config),
        '"$PY" -m airflow_spot_provider.agent "$SPOT_ROOT/agent.json"',
        'echo "agent exited with $?; powering off"',
        "sync",
        "shutdown -h now",
        "",
    ])


def backup_script(backup_config: dict[str, Any], *, python: str, devices: Sequence[str],
                  agent_install: Sequence[Sequence[str]], mount_wait: int = 600) -> str:
    """Boot a backup-save helper: wait for the dead attempt's disk, mount it read-only, copy, power off."""
    return "\n".join([
        _PREAMBLE.format(role="backup-save helper", python=shlex.quote(python),
                         devices=" ".join(shlex.quote(d) for d in devices)),
        _install(agent_install, ()),
        f"mount_data {int(mount_wait)} ro,noload",
        _json_file("backup.json", backup_config),
        '"$PY" -m airflow_spot_provider.agent.backup "$SPOT_ROOT/backup.json"',
        "sync",
        "shutdown -h now",
        "",
    ])
