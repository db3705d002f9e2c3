# Sourced by demo.sh and test.sh: make sure .venv exists with the project installed (editable, with extras).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "Setting up $VENV (first run only) ..."
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  if ! { "$VENV/bin/python" -m pip install --upgrade pip && "$VENV/bin/python" -m pip install -e "$ROOT[dev]"; } \
       >"$VENV/install.log" 2>&1; then
    tail -n 40 "$VENV/install.log"; echo "installing into $VENV failed (log: $VENV/install.log)"; exit 1
  fi
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
