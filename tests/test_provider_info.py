import json
import subprocess
from pathlib import Path

import airflow
import jsonschema

from airflow_spot_provider.get_provider_info import get_provider_info

from .conftest import AIRFLOW


def test_provider_info_matches_airflows_schema():
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    assert info["package-name"] == "airflow-spot-provider"


def test_airflow_providers_list_shows_the_provider():
    out = subprocess.run([AIRFLOW, "providers", "list", "-o", "json"], check=True, capture_output=True, text=True)
    packages = {p["package_name"] for p in json.loads(out.stdout)}
    assert "airflow-spot-provider" in packages
