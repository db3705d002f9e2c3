# Sourced by test.sh: make sure PostgreSQL answers on 127.0.0.1:5432 (start it if it is down).
# The cluster reliability tests (tests/test_cluster_*.py, tests/test_ui.py) run real Airflow processes on
# PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres): start Debian's cluster if it is down.
pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
ensure_postgres() {
  pg_up && return 0
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters --no-header | while read -r version cluster port status _; do
      if [ "$port" = 5432 ] && [ "$status" != online ]; then pg_ctlcluster "$version" "$cluster" start || true; fi
    done
  fi
  pg_up || service postgresql start || true
  for _ in $(seq 30); do
    pg_up && return 0
    sleep 1
  done
  echo "PostgreSQL is not accepting connections on 127.0.0.1:5432" >&2
  return 1
}
ensure_postgres
