"""The offline Google Cloud (tests/gcp_fake/) driven through the real clients: google-cloud-compute's REST
clients, google-auth service-account and metadata-server credentials, gcsfs and Airflow's ObjectStoragePath."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1
from google.oauth2 import credentials as oauth2_credentials
from google.oauth2 import service_account

from .gcp_fake import FakeGcp, FakeGcs, FilterError, compile_filter
from .waiting import wait_for

PROJECT, ZONE_A, ZONE_B = "test-project", "us-central1-a", "us-central1-b"
IMAGE = "projects/debian-cloud/global/images/family/debian-12"
PY = sys.executable


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    emulator = FakeGcs(tmp_path_factory.mktemp("gcs") / "data")
    yield emulator
    emulator.close()


@pytest.fixture
def fake(tmp_path, gcs):
    cloud = FakeGcp(tmp_path / "gcp", gcs=gcs)
    try:
        yield cloud
    finally:
        cloud.close()
    assert not cloud.processes_alive()
    assert not cloud.errors  # every response parsed as the real proto


def clients(fake: FakeGcp, credentials=None) -> SimpleNamespace:
    kwargs = {"credentials": credentials or AnonymousCredentials(), "transport": "rest",
              "client_options": fake.client_options()}
    return SimpleNamespace(instances=compute_v1.InstancesClient(**kwargs), disks=compute_v1.DisksClient(**kwargs),
                           ops=compute_v1.ZoneOperationsClient(**kwargs))


def vm_id(name: str, zone: str = ZONE_A) -> str:
    """The backend's id of an instance, which the fake's control layer takes."""
    return f"{zone}/{name}"


def spot_vm(name: str, zone: str = ZONE_A, *, labels=None, script: str | None = None, action: str = "STOP",
            data_disk: str | None = None, machine: str = "e2-small") -> dict:
    disks = [{"boot": True, "auto_delete": True, "initialize_params": {"source_image": IMAGE}}]
    if data_disk:
        disks.append({"device_name": "spot-data", "auto_delete": False,
                      "initialize_params": {"disk_name": data_disk, "disk_size_gb": 20}})
    body = {"name": name, "machine_type": f"zones/{zone}/machineTypes/{machine}", "labels": labels or {},
            "scheduling": {"provisioning_model": "SPOT", "instance_termination_action": action},
            "disks": disks, "service_accounts": [{"email": "vm@test-project.iam.gserviceaccount.com",
                                                  "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}]}
    if script is not None:
        body["metadata"] = {"items": [{"key": "startup-script", "value": script}]}
    return body


def insert(api: SimpleNamespace, body: dict, zone: str | None = None, request_id: str | None = None):
    zone = zone or body["machine_type"].split("/")[1]
    request = {"project": PROJECT, "zone": zone, "instance_resource": body}
    if request_id:
        request["request_id"] = request_id
    return api.instances.insert(request=request)


# -- API shape ------------------------------------------------------------------------------------------------
def test_insert_with_the_same_request_id_creates_one_instance(fake):
    api = clients(fake)
    request_id = str(uuid.uuid4())
    first = insert(api, spot_vm("vm-1"), request_id=request_id)
    first.result()
    again = insert(api, spot_vm("vm-1"), request_id=request_id)
    assert again.name == first.name and again.id == first.id and first.name == f"operation-{first.id}"
    assert [i.name for i in api.instances.list(project=PROJECT, zone=ZONE_A)] == ["vm-1"]
    assert fake.calls["instances.insert"] == 2
    with pytest.raises(exceptions.Conflict):  # without the token the duplicate is an error, not a second VM
        insert(api, spot_vm("vm-1"))
    with pytest.raises(exceptions.BadRequest, match="valid UUID"):
        insert(api, spot_vm("vm-2"), request_id="attempt-1")

    vm = api.instances.get(project=PROJECT, zone=ZONE_A, instance="vm-1")
    assert vm.id > 0 and vm.status in ("PROVISIONING", "RUNNING")
    assert vm.scheduling.provisioning_model == "SPOT" and vm.scheduling.preemptible
    assert vm.scheduling.instance_termination_action == "STOP"
    assert vm.zone.endswith(f"/zones/{ZONE_A}") and vm.machine_type.endswith("/machineTypes/e2-small")
    assert vm.disks[0].boot and vm.disks[0].auto_delete and vm.disks[0].source.endswith("/disks/vm-1")
    boot = api.disks.get(project=PROJECT, zone=ZONE_A, disk="vm-1")
    assert list(boot.users) == [vm.self_link]
    fake.wait_status(PROJECT, ZONE_A, "vm-1", "RUNNING", timeout=60)
    running = api.instances.get(project=PROJECT, zone=ZONE_A, instance="vm-1")
    assert running.last_start_timestamp and running.creation_timestamp
    op = api.ops.get(project=PROJECT, zone=ZONE_A, operation=first.name)
    assert op.status == compute_v1.Operation.Status.DONE and op.operation_type == "insert"
    assert op.target_link == vm.self_link and op.target_id == vm.id
    assert api.ops.wait(project=PROJECT, zone=ZONE_A, operation=first.name).name == first.name


def test_slow_operations_finish_later_and_wait_blocks_until_done(tmp_path):
    with FakeGcp(tmp_path / "gcp", operation_seconds=0.3) as slow:
        api = clients(slow)
        op = api.instances.insert_unary(project=PROJECT, zone=ZONE_A, instance_resource=spot_vm("vm"))
        assert op.status == compute_v1.Operation.Status.RUNNING and not op.end_time
        done = api.ops.wait(project=PROJECT, zone=ZONE_A, operation=op.name)  # RUNNING above: wait blocked
        assert done.status == compute_v1.Operation.Status.DONE and done.progress == 100 and done.end_time


def test_list_filters(fake):
    api = clients(fake)
    for name, labels in [("a", {"spot-token": "abc", "team": "ml"}), ("b", {"spot-token": "def", "team": "ml"}),
                         ("c", {"team": "web"})]:
        insert(api, spot_vm(name, labels=labels)).result()
    api.instances.stop(project=PROJECT, zone=ZONE_A, instance="c").result()

    def names(text, zone=ZONE_A, page=None):
        request = {"project": PROJECT, "zone": zone, "filter": text}
        if page:
            request["max_results"] = page
        return sorted(i.name for i in api.instances.list(request=request))

    assert names('labels.spot-token = "abc"') == ["a"]
    assert names("labels.spot-token=abc") == ["a"]
    assert names('labels.spot-token != "abc"') == ["b", "c"]
    assert names('labels.team = "ml" AND labels.spot-token = "def"') == ["b"]
    assert names('(labels.team = "ml") (labels.spot-token = "abc")') == ["a"]
    assert names('labels.spot-token = "abc" OR labels.team = "web"') == ["a", "c"]
    assert names("labels.spot-token:*") == ["a", "b"]
    assert names('status = "TERMINATED"') == ["c"]
    assert names("name eq '[ab]'") == ["a", "b"]
    assert names("", page=1) == ["a", "b", "c"]  # the pager follows nextPageToken
    assert names('labels.spot-token = "abc"', zone=ZONE_B) == []
    with pytest.raises(exceptions.BadRequest, match="filter"):
        names('labels.team = "ml" AND (')
    aggregated = api.instances.aggregated_list(request={"project": PROJECT, "filter": 'labels.team = "ml"'})
    assert sorted(i.name for _, scoped in aggregated for i in scoped.instances) == ["a", "b"]
    assert sorted(d.name for d in api.disks.list(request={"project": PROJECT, "zone": ZONE_A,
                                                           "filter": 'name = "a" OR name = "b"'})) == ["a", "b"]


@pytest.mark.parametrize(("text", "resource", "expected"), [
    ('labels.k = "v"', {"labels": {"k": "v"}}, True),
    ('labels.k = "v"', {"labels": {}}, False),
    ('labels.k != "v"', {}, True),
    ('NOT labels.k = "v"', {"labels": {"k": "v"}}, False),
    ('-labels.k = "v"', {"labels": {"k": "w"}}, True),
    ('targetLink = "https://x/compute/v1/projects/p/zones/z/instances/i"',
     {"targetLink": "https://x/compute/v1/projects/p/zones/z/instances/i"}, True),
    ("scheduling.preemptible = true", {"scheduling": {"preemptible": True}}, True),
    ('name = "vm-*"', {"name": "vm-12"}, True),
    ('a = "1" b = "2" OR b = "3"', {"a": "1", "b": "3"}, True),
    ("disks.deviceName = spot-data", {"disks": [{"deviceName": "boot"}, {"deviceName": "spot-data"}]}, True),
])
def test_filter_expressions(text, resource, expected):
    assert compile_filter(text)(resource) is expected


@pytest.mark.parametrize("text", ["labels.k =", "(a = 1", "= 1", "a = 1 )", "name eq '('"])
def test_bad_filters_are_rejected(text):
    with pytest.raises(FilterError):
        compile_filter(text)


def test_zone_resource_pool_exhausted_in_one_zone_only(fake):
    api = clients(fake)
    fake.fail_launch("ZONE_RESOURCE_POOL_EXHAUSTED", zone=ZONE_A)
    operation = insert(api, spot_vm("big", ZONE_A))  # the call succeeds: the operation carries the error
    with pytest.raises(exceptions.ServiceUnavailable) as caught:
        operation.result()
    assert caught.value.errors[0].code == "ZONE_RESOURCE_POOL_EXHAUSTED"
    raw = api.instances.insert_unary(request={"project": PROJECT, "zone": ZONE_A,
                                              "instance_resource": spot_vm("big")})
    assert raw.status == compute_v1.Operation.Status.DONE and raw.http_error_status_code == 503
    assert raw.error.errors[0].code == "ZONE_RESOURCE_POOL_EXHAUSTED"
    assert not fake.instance(PROJECT, ZONE_A, "big")
    insert(api, spot_vm("big", ZONE_B)).result()
    assert fake.instance(PROJECT, ZONE_B, "big")

    fake.fail_launch("QUOTA_EXCEEDED", zone=ZONE_B, instance_type="g2-standard-4", times=1)
    with pytest.raises(exceptions.Forbidden) as quota:
        insert(api, spot_vm("gpu", ZONE_B, machine="g2-standard-4")).result()
    assert quota.value.errors[0].code == "QUOTA_EXCEEDED"
    insert(api, spot_vm("gpu", ZONE_B, machine="g2-standard-4")).result()  # times=1: the next one works

    fake.fail_launch("rateLimitExceeded", zone=ZONE_B, times=1)
    with pytest.raises(exceptions.TooManyRequests) as limited:  # on the call itself, not the operation
        insert(api, spot_vm("again", ZONE_B))
    assert limited.value.errors[0]["reason"] == "rateLimitExceeded"
    fake.fail_launch("rateLimitExceeded", zone=ZONE_B, times=1, status=403)
    with pytest.raises(exceptions.Forbidden):
        insert(api, spot_vm("again", ZONE_B))
    fake.throttle(times=1)  # any zone and machine type
    with pytest.raises(exceptions.TooManyRequests):
        insert(api, spot_vm("again", ZONE_B, machine="e2-medium"))
    insert(api, spot_vm("again", ZONE_B, machine="e2-medium")).result()


def test_request_id_of_a_failed_insert_returns_the_same_failed_operation(fake):
    api = clients(fake)
    fake.fail_launch("ZONE_RESOURCE_POOL_EXHAUSTED", zone=ZONE_A, times=1)
    request_id = str(uuid.uuid4())
    with pytest.raises(exceptions.ServiceUnavailable):
        insert(api, spot_vm("vm"), request_id=request_id).result()
    with pytest.raises(exceptions.ServiceUnavailable):  # as on GCE: a retry needs a new requestId
        insert(api, spot_vm("vm"), request_id=request_id).result()
    insert(api, spot_vm("vm"), request_id=str(uuid.uuid4())).result()


def test_strict_about_what_the_real_api_rejects(fake):
    api = clients(fake)
    with pytest.raises(exceptions.BadRequest, match="Label value"):
        insert(api, spot_vm("vm", labels={"dag": "My_DAG"}))
    with pytest.raises(exceptions.BadRequest, match="machineType"):
        insert(api, {**spot_vm("vm"), "machine_type": "zones/us-east1-b/machineTypes/e2-small"}, zone=ZONE_A)
    status, text = fake.api.dispatch("POST", f"/compute/v1/projects/{PROJECT}/zones/{ZONE_A}/instances", {},
                                  json.dumps({"name": "vm", "provisioningModl": "SPOT"}).encode(), {})
    assert status == 400 and "provisioningModl" in text
    insert(api, spot_vm("vm", labels={"a": "1"})).result()
    vm = api.instances.get(project=PROJECT, zone=ZONE_A, instance="vm")
    with pytest.raises(exceptions.PreconditionFailed):
        api.instances.set_labels(project=PROJECT, zone=ZONE_A, instance="vm", instances_set_labels_request_resource={
            "labels": {"a": "2"}, "label_fingerprint": "stale"})
    api.instances.set_labels(project=PROJECT, zone=ZONE_A, instance="vm", instances_set_labels_request_resource={
        "labels": {"a": "2"}, "label_fingerprint": vm.label_fingerprint}).result()
    assert api.instances.get(project=PROJECT, zone=ZONE_A, instance="vm").labels == {"a": "2"}
    with pytest.raises(exceptions.NotFound):
        api.instances.get(project=PROJECT, zone=ZONE_A, instance="nope")
    with pytest.raises(exceptions.NotFound, match="projects/other"):  # the fake holds one project
        api.instances.get(project="other", zone=ZONE_A, instance="vm")


def test_service_account_credentials_work_and_forgeries_do_not(fake):
    info = fake.service_account_info(secret_marker="s3cr3t-marker")
    assert info["private_key_id"].startswith("s3cr3t-marker") and info["token_uri"] == f"{fake.endpoint}/token"
    creds = service_account.Credentials.from_service_account_info(
        info, scopes=["https://www.googleapis.com/auth/cloud-platform"])
    api = clients(fake, creds)
    insert(api, spot_vm("vm"), request_id=str(uuid.uuid4())).result()
    assert [i.name for i in api.instances.list(request={"project": PROJECT, "zone": ZONE_A,
                                                        "filter": 'name = "vm"'})] == ["vm"]
    assert fake.auth["jwt"] >= 2 and not fake.auth["anonymous"]  # compute_v1 sends a self-signed JWT
    op = api.ops.list(request={"project": PROJECT, "zone": ZONE_A})
    assert [o.user for o in op] == [info["client_email"]]

    from google.auth.transport.requests import Request

    creds.refresh(Request())  # the OAuth flow other libraries (gcsfs, the Airflow hook) use
    assert fake.calls["oauth.token"] == 1 and creds.token.startswith("ya29.")

    forged = dict(info, private_key=fake.service_account_info()["private_key"])  # right key id, wrong key
    bad = clients(fake, service_account.Credentials.from_service_account_info(forged))
    with pytest.raises(exceptions.Unauthorized):
        bad.instances.list(project=PROJECT, zone=ZONE_A)

    name, value = fake.airflow_conn("gcp_spot", PROJECT, secret_marker="conn-marker")
    conn = json.loads(value)
    assert name == "AIRFLOW_CONN_GCP_SPOT" and conn["conn_type"] == "google_cloud_platform"
    assert conn["extra"]["project"] == PROJECT and "conn-marker" in json.loads(conn["extra"]["keyfile_dict"])[
        "private_key_id"]


# -- VMs --------------------------------------------------------------------------------------------------------
WATCHER = f"""#!/bin/bash
exec {PY} - <<'EOF'
import json, os, signal, time, urllib.request
data = os.path.join(os.environ["SPOT_ROOT"], "data")
signal.signal(signal.SIGTERM, lambda *a: open(os.path.join(data, "sigterm"), "w").write(str(time.time())))
def get(path):
    url = "http://" + os.environ["GCE_METADATA_HOST"] + "/computeMetadata/v1/" + path
    with urllib.request.urlopen(urllib.request.Request(url, headers={{"Metadata-Flavor": "Google"}})) as r:
        return r.read().decode()
open(os.path.join(data, "before"), "w").write(get("instance/preempted"))
open(os.path.join(data, "ready"), "w").write(get("instance/id"))
value = get("instance/preempted?wait_for_change=true&timeout_sec=30")
open(os.path.join(data, "notice"), "w").write(json.dumps({{"value": value, "time": time.time()}}))
while True:
    time.sleep(1)
EOF
"""


def test_preempt_with_notice(fake):
    api = clients(fake)
    insert(api, spot_vm("spot", script=WATCHER, data_disk="spot-data-1")).result()
    data = fake.disk_dir(ZONE_A, "spot-data-1")
    vm = fake.instance(PROJECT, ZONE_A, "spot")
    assert wait_for(lambda: (data / "ready").exists() and (data / "ready").read_text()) == vm["id"]
    assert fake.data_dir(vm_id("spot")).resolve() == data.resolve()  # the data disk, as the VM sees it
    assert (data / "before").read_text() == "FALSE"

    started = time.time()
    grace = 10.0  # GCE gives 30 s; long enough here that a loaded machine sees the soft-off phase
    fake.preempt(vm_id("spot"), notice_seconds=grace)
    notice = json.loads(wait_for(lambda: (data / "notice").exists() and (data / "notice").read_text(), timeout=60))
    assert notice["value"] == "TRUE" and notice["time"] - started < grace  # the long-poll returned before hard-off
    assert wait_for(lambda: (data / "sigterm").exists(), timeout=60)  # ACPI soft-off
    assert fake.instance(PROJECT, ZONE_A, "spot")["status"] == "STOPPING" and fake.processes_alive()
    assert fake.wait_gone(vm_id("spot")) == "TERMINATED"
    assert time.time() - started >= grace and not fake.processes_alive()

    link = vm["selfLink"]
    preempted = list(api.ops.list(request={"project": PROJECT, "zone": ZONE_A, "filter":
                                           f'operationType = "compute.instances.preempted" AND targetLink = "{link}"'}))
    assert len(preempted) == 1 and preempted[0].status_message == "Instance was preempted."
    assert preempted[0].status == compute_v1.Operation.Status.DONE and preempted[0].target_id == int(vm["id"])
    assert api.disks.get(project=PROJECT, zone=ZONE_A, disk="spot-data-1").users == [link]  # STOP: all stays
    assert (data / "ready").exists()


def test_preempt_with_delete_action_keeps_only_disks_without_auto_delete(fake):
    api = clients(fake)
    insert(api, spot_vm("gone", action="DELETE", data_disk="keep-me", script="sleep 60")).result()
    fake.wait_status(PROJECT, ZONE_A, "gone", "RUNNING")
    wait_for(fake.processes_alive)
    fake.preempt(vm_id("gone"), notice_seconds=None)
    assert fake.wait_gone(vm_id("gone")) == "DELETED"
    assert not fake.processes_alive()
    with pytest.raises(exceptions.NotFound):
        api.disks.get(project=PROJECT, zone=ZONE_A, disk="gone")  # the boot disk had autoDelete
    kept = api.disks.get(project=PROJECT, zone=ZONE_A, disk="keep-me")
    assert not kept.users and fake.disk_dir(ZONE_A, "keep-me").is_dir()
    assert [o.operation_type for o in api.ops.list(request={
        "project": PROJECT, "zone": ZONE_A, "filter": 'operationType = "compute.instances.preempted"'})] == [
        "compute.instances.preempted"]

    insert(api, {**spot_vm("standard"), "scheduling": {"provisioning_model": "STANDARD"}}).result()
    with pytest.raises(ValueError, match="not a spot"):
        fake.preempt(vm_id("standard"))
    fake.lose(vm_id("standard"))  # a host error: no preempted operation
    assert fake.instance(PROJECT, ZONE_A, "standard")["status"] == "TERMINATED"
    assert len(list(api.ops.list(request={"project": PROJECT, "zone": ZONE_A,
                                          "filter": 'operationType = "compute.instances.preempted"'}))) == 1
    (host_error,) = api.ops.list(request={"project": PROJECT, "zone": ZONE_A,
                                          "filter": 'operationType = "compute.instances.hostError"'})
    assert host_error.target_link.endswith("/instances/standard")
    with pytest.raises(ValueError, match="TERMINATED"):
        fake.lose(vm_id("standard"))


def test_set_disk_auto_delete_and_a_held_deletion(fake):
    api = clients(fake)
    insert(api, spot_vm("vm", data_disk="vm-data", script="sleep 60")).result()
    fake.wait_status(PROJECT, ZONE_A, "vm", "RUNNING")
    wait_for(fake.processes_alive)
    path = f"/compute/v1/projects/{PROJECT}/zones/{ZONE_A}/instances/vm/setDiskAutoDelete"
    for query, named in (({"deviceName": "spot-data"}, "'autoDelete' not specified"),
                         ({"autoDelete": "yes", "deviceName": "spot-data"}, "'autoDelete': 'yes'"),
                         ({"autoDelete": "true"}, "'deviceName' not specified"),
                         ({"autoDelete": "true", "deviceName": "nope"}, "device name 'nope'")):
        status, text = fake.api.dispatch("POST", path, query, b"", {})
        assert status == 400 and named in text, text
    api.instances.set_disk_auto_delete(project=PROJECT, zone=ZONE_A, instance="vm", auto_delete=True,
                                       device_name="spot-data").result()
    assert [d["autoDelete"] for d in fake.instance(PROJECT, ZONE_A, "vm")["disks"]] == [True, True]

    fake.hold_termination(vm_id("vm"))
    op = api.instances.delete_unary(project=PROJECT, zone=ZONE_A, instance="vm")
    assert op.status == compute_v1.Operation.Status.RUNNING
    assert fake.instance(PROJECT, ZONE_A, "vm")["status"] == "STOPPING" and not fake.processes_alive()
    assert api.disks.get(project=PROJECT, zone=ZONE_A, disk="vm-data").users  # still attached
    with pytest.raises(exceptions.BadRequest, match="not ready"):  # a VM being deleted takes no changes
        api.instances.set_disk_auto_delete(project=PROJECT, zone=ZONE_A, instance="vm", auto_delete=False,
                                           device_name="spot-data")
    assert api.ops.get(project=PROJECT, zone=ZONE_A, operation=op.name).status == compute_v1.Operation.Status.RUNNING
    fake.finish_termination(vm_id("vm"))
    assert api.ops.get(project=PROJECT, zone=ZONE_A, operation=op.name).status == compute_v1.Operation.Status.DONE
    assert fake.instance(PROJECT, ZONE_A, "vm") is None
    with pytest.raises(exceptions.NotFound):  # autoDelete: it went with the VM
        api.disks.get(project=PROJECT, zone=ZONE_A, disk="vm-data")


def test_startup_script_writes_to_the_data_disk_and_shuts_down(fake):
    api = clients(fake)
    script = ('echo "hello from $(hostname)" > "$SPOT_ROOT/data/x"\n'
              'command -v shutdown > "$SPOT_ROOT/data/which"\n'
              'env > "$SPOT_ROOT/env"\n'
              'echo "on the console"\n'
              "shutdown -h now\n"
              "sleep 60\n")
    insert(api, spot_vm("worker", script=script, data_disk="worker-data")).result()
    fake.wait_status(PROJECT, ZONE_A, "worker", "TERMINATED", timeout=60)
    data = fake.disk_dir(ZONE_A, "worker-data")
    assert (data / "x").read_text().startswith("hello from")
    shim = (data / "which").read_text().strip()
    assert shim == str(fake.vm_dir(vm_id("worker")) / "bin" / "shutdown")  # before /usr/sbin/shutdown, even as root
    env = dict(line.split("=", 1) for line in (fake.vm_dir(vm_id("worker")) / "root" / "env").read_text().splitlines()
               if "=" in line)
    assert env["PATH"].split(":")[:2] == [str(fake.vm_dir(vm_id("worker")) / "bin"), str(Path(PY).parent)]
    assert env["HOME"] == env["SPOT_ROOT"] == str(fake.vm_dir(vm_id("worker")) / "root")
    assert env["GCE_METADATA_HOST"] == fake.metadata_host(vm_id("worker")) == env["GCE_METADATA_IP"]
    assert env["STORAGE_EMULATOR_HOST"] == fake.gcs.url and "AIRFLOW_HOME" not in env
    assert "on the console" in fake.console(vm_id("worker"))
    serial = api.instances.get_serial_port_output(project=PROJECT, zone=ZONE_A, instance="worker")
    assert "on the console" in serial.contents
    assert not fake.processes_alive()

    api.instances.start(project=PROJECT, zone=ZONE_A, instance="worker").result()  # startup scripts run every boot
    fake.wait_status(PROJECT, ZONE_A, "worker", "RUNNING")
    fake.wait_status(PROJECT, ZONE_A, "worker", "TERMINATED", timeout=60)
    assert fake.console(vm_id("worker")).count("on the console") == 2


def test_metadata_server(fake):
    api = clients(fake)
    insert(api, spot_vm("md", script="sleep 60")).result()
    host = fake.metadata_host(vm_id("md"))

    def get(path, flavor=True):
        request = urllib.request.Request(f"http://{host}/computeMetadata/v1/{path}",
                                         headers={"Metadata-Flavor": "Google"} if flavor else {})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Metadata-Flavor"] == "Google"
            return response.read().decode()

    with pytest.raises(urllib.error.HTTPError) as refused:
        get("instance/id", flavor=False)
    assert refused.value.code == 403
    assert get("instance/id") == fake.instance(PROJECT, ZONE_A, "md")["id"]
    assert get("instance/name") == "md" and get("instance/zone").endswith(f"/zones/{ZONE_A}")
    assert get("project/project-id") == PROJECT
    assert get("instance/attributes/startup-script") == "sleep 60"
    assert get("instance/service-accounts/default/email") == "vm@test-project.iam.gserviceaccount.com"
    account = json.loads(get("instance/service-accounts/default/?recursive=true"))
    assert account["email"] == "vm@test-project.iam.gserviceaccount.com" and account["scopes"]
    token = json.loads(get("instance/service-accounts/default/token"))
    assert token["token_type"] == "Bearer" and token["expires_in"] > 0
    started = time.monotonic()
    assert get("instance/preempted?wait_for_change=true&timeout_sec=1") == "FALSE"  # nothing changed: timeout
    assert 0.9 < time.monotonic() - started < 3
    # A rebalance is GCE's host-maintenance event, an early warning.
    assert get("instance/maintenance-event") == "NONE"
    fake.rebalance(vm_id("md"))
    assert get("instance/maintenance-event") == "TERMINATE_ON_HOST_MAINTENANCE"
    assert fake.instance(PROJECT, ZONE_A, "md")["status"] in ("PROVISIONING", "RUNNING")  # not an interruption
    # The VM's own token is good for the Compute API (e.g. an agent looking itself up).
    vm_creds = oauth2_credentials.Credentials(token["access_token"])
    vm_api = compute_v1.InstancesClient(credentials=vm_creds, transport="rest", client_options=fake.client_options())
    assert vm_api.get(project=PROJECT, zone=ZONE_A, instance="md").name == "md" and fake.auth["token"] == 1


def test_disk_attached_later_to_another_instance(fake):
    api = clients(fake)
    insert(api, spot_vm("trainer", data_disk="ckpt-disk", script='echo step-7 > "$SPOT_ROOT/data/ckpt"; sleep 60')
           ).result()
    insert(api, spot_vm("rescuer")).result()
    disk_dir = fake.disk_dir(ZONE_A, "ckpt-disk")
    wait_for(lambda: (disk_dir / "ckpt").exists())
    fake.preempt(vm_id("trainer"), notice_seconds=None)
    fake.wait_status(PROJECT, ZONE_A, "trainer", "TERMINATED")
    disk_url = api.disks.get(project=PROJECT, zone=ZONE_A, disk="ckpt-disk").self_link

    attach = {"source": disk_url, "device_name": "spot-data", "auto_delete": False}
    with pytest.raises(exceptions.BadRequest, match="already being used"):
        api.instances.attach_disk(project=PROJECT, zone=ZONE_A, instance="rescuer", attached_disk_resource=attach)
    with pytest.raises(exceptions.BadRequest, match="already being used"):
        api.disks.delete(project=PROJECT, zone=ZONE_A, disk="ckpt-disk")
    api.instances.detach_disk(project=PROJECT, zone=ZONE_A, instance="trainer", device_name="spot-data").result()
    assert not (fake.vm_dir(vm_id("trainer")) / "root" / "data").exists()
    fake.wait_status(PROJECT, ZONE_A, "rescuer", "RUNNING")
    api.instances.attach_disk(project=PROJECT, zone=ZONE_A, instance="rescuer", attached_disk_resource=attach).result()
    rescued = fake.vm_dir(vm_id("rescuer")) / "root" / "data" / "ckpt"
    assert wait_for(lambda: rescued.exists() and rescued.read_text()) == "step-7\n"
    assert api.disks.get(project=PROJECT, zone=ZONE_A, disk="ckpt-disk").users == [
        api.instances.get(project=PROJECT, zone=ZONE_A, instance="rescuer").self_link]

    api.instances.detach_disk(project=PROJECT, zone=ZONE_A, instance="rescuer", device_name="spot-data").result()
    assert not (fake.vm_dir(vm_id("rescuer")) / "root" / "data").exists()
    api.disks.delete(project=PROJECT, zone=ZONE_A, disk="ckpt-disk").result()
    assert not disk_dir.exists()


# -- GCS ---------------------------------------------------------------------------------------------------------
def test_gcsfs_and_object_storage_path_round_trip(fake, gcs, monkeypatch):
    import gcsfs

    assert gcsfs.GCSFileSystem is gcsfs.core.GCSFileSystem, "gcsfs was imported before GCSFS_PLAIN was set"
    gcs.create_bucket("ckpt")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
    fs = gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)
    fs.pipe("ckpt/job/attempt-1/model.bin", b"weights")
    assert fs.ls("ckpt/job/attempt-1", detail=False) == ["ckpt/job/attempt-1/model.bin"]
    assert fs.cat("ckpt/job/attempt-1/model.bin") == b"weights"
    fs.rm("ckpt/job/attempt-1/model.bin")
    assert not fs.exists("ckpt/job/attempt-1/model.bin")

    from airflow.sdk import ObjectStoragePath

    name, value = fake.airflow_conn("gcp_store", PROJECT)
    monkeypatch.setenv(name, value)
    path = ObjectStoragePath("gs://ckpt/airflow/x.txt", conn_id="gcp_store")
    path.write_text("via airflow")
    assert path.read_text() == "via airflow"
    assert [p.name for p in ObjectStoragePath("gs://ckpt/airflow/", conn_id="gcp_store").iterdir()] == ["x.txt"]
    assert fake.calls["oauth.token"] >= 1  # the connection's key was exchanged at this fake's /token
    path.unlink()


def test_a_vm_reaches_gcs_with_its_metadata_credentials(fake, gcs):
    gcs.create_bucket("vm-bucket")
    script = f"""#!/bin/bash
{PY} - <<'EOF' > "$SPOT_ROOT/out" 2>&1
import gcsfs, google.auth
credentials, _ = google.auth.default()
print(type(credentials).__module__)
gcsfs.GCSFileSystem().pipe("vm-bucket/from-vm.txt", b"written on the VM")
print("ok")
EOF
"""
    insert(clients(fake), spot_vm("uploader", script=script)).result()
    out = fake.vm_dir(vm_id("uploader")) / "root" / "out"
    text = wait_for(lambda: out.exists() and "\n" in out.read_text() and out.read_text().count("\n") >= 2
                    and out.read_text(), timeout=30)
    assert text.splitlines() == ["google.auth.compute_engine.credentials", "ok"], text
    request = urllib.request.Request(f"{gcs.url}/storage/v1/b/vm-bucket/o/from-vm.txt?alt=media")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.read() == b"written on the VM"


# -- cleanup ------------------------------------------------------------------------------------------------------
def test_no_processes_outlive_close(tmp_path):
    script = (f"{PY} -c 'import os, time; os.setsid(); time.sleep(300)' &\n"  # left the VM's process group
              "sleep 300 &\n"
              "sleep 300\n")
    fake = FakeGcp(tmp_path / "gcp")
    try:
        api = clients(fake)
        for name in ("one", "two"):
            insert(api, spot_vm(name, script=script)).result()

        def escaped() -> list[int]:
            return [p for p in fake.processes_alive() if os.getpgid(p) == p and "os.setsid()" in " ".join(
                psutil.Process(p).cmdline())]

        assert len(wait_for(lambda: len(escaped()) == 2 and escaped())) == 2
        pids = wait_for(lambda: len(fake.processes_alive()) >= 8 and fake.processes_alive())
        wait_for(lambda: set(escaped()) <= fake.tracked(vm_id("one")) | fake.tracked(vm_id("two")),
                 what="the runner to record the processes that left their group")
    finally:
        fake.close()
    assert not fake.processes_alive()
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{fake.endpoint}/compute/v1/projects/p/zones/z/instances", timeout=2)


def test_reset_forgets_resources_but_keeps_keys(fake):
    creds = service_account.Credentials.from_service_account_info(fake.service_account_info())
    api = clients(fake, creds)
    insert(api, spot_vm("vm", script="sleep 60", data_disk="vm-data")).result()
    wait_for(fake.processes_alive)
    fake.fail_launch("ZONE_RESOURCE_POOL_EXHAUSTED")
    fake.reset()
    assert not fake.processes_alive() and not fake.calls and not fake.disk_dir(ZONE_A, "vm-data").exists()
    assert list(api.instances.list(project=PROJECT, zone=ZONE_A)) == []
    insert(api, spot_vm("vm")).result()  # the injected failure is gone, the key still authenticates
    assert fake.calls["instances.insert"] == 1 and fake.auth["jwt"] == 2
