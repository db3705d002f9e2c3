"""``python -m airflow_spot_provider.agent CONFIG.json`` — run one attempt (what a VM's bootstrap calls)."""

import sys

from airflow_spot_provider.agent.runner import main

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m airflow_spot_provider.agent CONFIG.json")
    sys.exit(main(sys.argv[1]))
