#!/usr/bin/env bash
# Fails when the committed UI bundles differ from a fresh build of the sources (run in CI).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIST="$ROOT/airflow_spot_provider/plugins/www/dist"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if ! "$ROOT/scripts/build_ui.sh" "$WORK/dist" >"$WORK/build.log" 2>&1; then
  cat "$WORK/build.log"
  echo "UI bundle check FAILED: building airflow_spot_provider/plugins/www did not succeed (log above)."
  exit 1
fi

if ! diff -r "$DIST" "$WORK/dist" >/dev/null 2>&1; then
  echo "UI bundle check FAILED: the committed bundles in airflow_spot_provider/plugins/www/dist/ differ from"
  echo "a fresh build of airflow_spot_provider/plugins/www/src:"
  diff -rq "$DIST" "$WORK/dist" 2>&1 | sed "s|$WORK/dist|<fresh build>|g; s|$ROOT/||g" || true
  echo "Run scripts/build_ui.sh and commit the updated dist/ files."
  exit 1
fi
echo "UI bundles are up to date: $(cd "$DIST" && ls | tr '\n' ' ')"
