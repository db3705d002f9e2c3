"""What only the GCP backend does, against the offline Google Cloud (tests/gcp_fake/): real google-cloud-compute
REST clients with service-account credentials from an Airflow connection. The scenarios every cloud shares are in
tests/test_cloud_backends.py; the GCP fake, its settings and its view of a job's resources are in tests/clouds.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from airflow_spot_provider.backends.base import JobIdentity

from .clouds import GcpCloud, open_cloud, task
from .test_cloud_backends import SLEEPER


@pytest.fixture(scope="module")
def gcp(tmp_path_factory) -> Iterator[GcpCloud]:
    with open_cloud("gcp", tmp_path_factory.mktemp("gcp")) as cloud:
        yield cloud


def test_attempt_vm_labels_scheduling_disks_and_a_replayed_insert(gcp):
    from airflow_spot_provider.backends.gcp import request_id

    be = gcp.backend()
    # Ids GCE labels cannot hold as they are (upper case, ':', '+', '.'): labels stay valid and readable.
    identity = JobIdentity("Nightly.Retrain", "manual__2026-01-01T00:00:00+00:00", "labels", 3, "nonce")
    req = gcp.request("labels", SLEEPER, identity=identity)
    first = be.launch(req)
    assert first.instance_id.startswith(f"{req.zone}/")  # the id names the zone the VM is in
    # The very same insert again (a lost response, retried): the same requestId, so no second VM and no error.
    instances = gcp.clients()[0]
    instances.insert(request={"project": gcp.project, "zone": req.zone, "instance_resource": be.insert_body(req),
                              "request_id": request_id(req.call_token, req.zone, req.instance_type)}).result()
    assert gcp.vms(task("labels")) == [first.instance_id]
    vm = gcp.fake.instance(gcp.project, *first.instance_id.split("/"))
    assert vm["labels"]["spot-token"] == req.token and vm["labels"]["spot-map-index"] == "3"
    assert vm["labels"]["spot-dag-id"].startswith("nightly_retrain-")
    assert vm["scheduling"]["provisioningModel"] == "SPOT" and vm["scheduling"]["instanceTerminationAction"] == "STOP"
    data = next(d for d in vm["disks"] if d["deviceName"] == "spot-data")
    assert data["autoDelete"] is False and next(d for d in vm["disks"] if d["boot"])["autoDelete"] is True
    be.terminate(first.instance_id)
    assert gcp.status(first.instance_id) == "TERMINATED"  # stopped, its disks kept for backup-save
    be.release(first.instance_id)
    assert gcp.leftovers(task("labels")) == []


def test_orphan_data_disk_is_listed_and_swept(gcp):
    be = gcp.backend()
    facts = be.launch(gcp.request("orphan", [sys.executable, "-c", "pass"]))
    zone, name = facts.instance_id.split("/")
    gcp.clients()[0].delete(project=gcp.project, zone=zone, instance=name).result()  # the VM went, its disk stayed
    (orphan,) = [i for i in be.list_instances() if i.tags.get("spot-task-id") == "orphan"]
    assert orphan.instance_id is None and orphan.disk_id == f"{zone}/{name}-data" and orphan.has_disk
    be.sweep_delete(orphan)
    assert gcp.leftovers(task("orphan")) == []


def test_startup_script_reads_gce_metadata_and_the_vm_uses_its_own_identity(gcp):
    be = gcp.backend()
    req = gcp.request("secret", ["python", "-c", "print('x')"])
    text = be.boot_script(req)
    assert json.loads(text.split("<<'SPOT_JSON_EOF'\n")[1].split("\n")[0])["notice"] == {"source": "gce-metadata"}
    body = json.dumps(be.insert_body(req))
    assert gcp.secret not in body and gcp.credential_word not in body
    assert be.insert_body(req)["service_accounts"][0]["email"] == "default"  # the VM's own identity


def test_validation(gcp):
    from airflow_spot_provider.backends.gcp import GcpBackend, label_value
    from airflow_spot_provider.spec import machine_from

    with pytest.raises(ValueError, match="backend_options"):
        GcpBackend(conn_id=gcp.conn_id, region_name="us-east-1")
    with pytest.raises(ValueError, match="wait_timeout"):
        GcpBackend(conn_id=gcp.conn_id, wait_timeout=0)
    be = GcpBackend(conn_id=gcp.conn_id, project_id=gcp.project)
    be.validate_machine(machine_from({"instance_types": ["g2-standard-8"], "zones": ["europe-west4-b"],
                                      "image": gcp.image}))
    zones, machine_type = list(gcp.zones), gcp.types[0]
    for bad, field in [({"instance_types": ["m5.large"], "zones": zones, "image": gcp.image}, "instance_types"),
                       ({"instance_types": [machine_type], "zones": ["us-east-1a"], "image": gcp.image}, "zones"),
                       ({"instance_types": [machine_type], "zones": zones, "image": "ami-0123"}, "image")]:
        with pytest.raises(ValueError, match=field):
            be.validate_machine(machine_from(bad))
    assert label_value("train") == "train"
    assert label_value("A" * 80) == label_value("A" * 80) and len(label_value("A" * 80)) == 63
    assert label_value("a.b") != label_value("a:b")


def test_module_leaves_no_vm_behind(gcp):
    """Every test above cleaned up after itself: no VM or disk of any job is left in the fake cloud."""
    assert gcp.leftovers({}) == []
