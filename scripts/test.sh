#!/usr/bin/env bash
# The tests: unit, emulated clouds (moto, a fake Compute API, the GCS emulator), end to end through
# dag.test(), and real Airflow processes (scheduler, dag-processor, triggerer, api-server) on PostgreSQL.
source "$(dirname "$0")/env.sh"
source "$(dirname "$0")/postgres.sh"
cd "$ROOT"
# The UI's browser tests (tests/test_ui.py) drive the system's Chromium through Playwright (no browser download).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing Debian's chromium for the browser tests ..."
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "No /usr/bin/chromium (install Debian's chromium package): the browser tests are skipped"
  fi
fi
ruff check .
exec python -m pytest -q -p no:cacheprovider "$@"
