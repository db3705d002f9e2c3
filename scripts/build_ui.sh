#!/usr/bin/env bash
# Builds the Airflow UI plugin bundles (Spot attempts tab, Spot training page) from
# airflow_spot_provider/plugins/www into its dist/ folder, which is committed: users install the wheel
# and never run node. Same sources and lockfile give byte-identical bundles.
# Usage: scripts/build_ui.sh [OUT_DIR]   (default: the committed dist/ folder)
set -euo pipefail
WWW="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/airflow_spot_provider/plugins/www"
cd "$WWW"
if [ "$#" -gt 0 ]; then
  mkdir -p "$1"
  export SPOT_UI_OUT_DIR="$(cd "$1" && pwd)"
fi
npm ci --no-audit --no-fund --loglevel=error
npm run --silent build
