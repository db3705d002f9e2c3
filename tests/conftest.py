"""Test session setup: a throwaway AIRFLOW_HOME (sqlite) and local-backend state dir, set before Airflow loads."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAINING = REPO / "dags_examples" / "training"
_HOME = Path(tempfile.mkdtemp(prefix="spot-airflow-home-"))
os.environ.update({
    "AIRFLOW_HOME": str(_HOME),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "tests" / "dags"),
    "SPOT_E2E_SPECS": str(_HOME / "e2e-specs"),
    "AIRFLOW_SPOT_LOCAL_DIR": str(_HOME / "spot-local"),
    # gcsfs's default filesystem asks a gRPC API about each bucket, which the GCS emulator lacks (it hangs).
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
})
AIRFLOW = str(Path(sys.executable).parent / "airflow")


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated sqlite metadata DB for dag.test()."""
    subprocess.run([AIRFLOW, "db", "migrate"], check=True, capture_output=True)
    return _HOME


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "spot-local"


@pytest.fixture
def local_backend(state_dir: Path):
    from airflow_spot_provider.backends.local import LocalBackend

    backend = LocalBackend(state_dir=str(state_dir))
    yield backend
    for item in backend.list_instances():  # nothing a test starts may outlive it
        backend.terminate(item.instance_id)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    sys.path.insert(0, str(TRAINING))
    import mlp

    path = tmp_path_factory.mktemp("data") / "data.npz"
    mlp.make_dataset(path, seed=0)
    return path
