#!/usr/bin/env bash
# The tests: unit, local-backend and end-to-end (real Airflow via dag.test, real agent processes).
source "$(dirname "$0")/env.sh"
cd "$ROOT"
ruff check .
exec python -m pytest -q -p no:cacheprovider "$@"
