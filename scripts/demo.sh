#!/usr/bin/env bash
# The main job: the example weekly retraining DAG on the local backend, with two simulated spot
# preemptions (the second without time to react), end to end in a real Airflow 3.3 (`airflow dags test`).
source "$(dirname "$0")/env.sh"
cd "$ROOT"
DEMO="$ROOT/.demo"
rm -rf "$DEMO" && mkdir -p "$DEMO"
export AIRFLOW_HOME="$DEMO/airflow" AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags_examples" \
       AIRFLOW__CORE__LOAD_EXAMPLES=False SPOT_DEMO_ROOT="$DEMO/data" AIRFLOW_SPOT_LOCAL_DIR="$DEMO/spot-local"
echo "Preparing Airflow (sqlite in $DEMO) ..."
airflow db migrate >"$DEMO/migrate.log" 2>&1
echo "Running DAG spot_weekly_retraining (prepare_data -> train on spot -> evaluate) ..."
start=$(date +%s)
if ! airflow dags test spot_weekly_retraining >"$DEMO/dag-test.log" 2>&1; then
  tail -n 60 "$DEMO/dag-test.log"; echo "demo FAILED (full log: $DEMO/dag-test.log)"; exit 1
fi
python "$ROOT/scripts/demo_report.py" "$DEMO/dag-test.log"
echo
echo "Attempts on record (airflow-spot status --all):"
airflow-spot status --all
python "$ROOT/scripts/demo_ui_link.py" 2>/dev/null || true
echo "Done in $(( $(date +%s) - start ))s. Full task log: $DEMO/dag-test.log"
