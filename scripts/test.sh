#!/usr/bin/env bash
# The tests: unit, emulated clouds (moto, a fake Compute API, the GCS emulator), end to end through
# dag.test(), and real Airflow processes (scheduler, dag-processor, triggerer, api-server) on PostgreSQL.
source "$(dirname "$0")/env.sh"
source "$(dirname "$0")/postgres.sh"
cd "$ROOT"
ruff check .
exec python -m pytest -q -p no:cacheprovider "$@"
