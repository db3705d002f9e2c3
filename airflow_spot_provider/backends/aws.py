"""The AWS backend: EC2 spot instances, checkpoints in S3, backup-save through a helper instance.

Everything goes through the amazon provider's ``EC2Hook`` (its boto3 client on the worker, its
aiobotocore client in the triggerer) and an ordinary ``aws`` connection. Per attempt:

- one spot instance launched with ``RunInstances`` (``InstanceMarketOptions`` one-time, a ``ClientToken``
  per launch call, tags carrying the job identity) and a separate EBS **data volume** at ``/dev/sdf``
  with ``DeleteOnTermination=false``: the checkpoint directory survives the instance;
- user data (:mod:`bootstrap`) that mounts the volume, runs the agent with the ``ec2-imds`` notice
  source and powers off (``InstanceInitiatedShutdownBehavior=terminate``). The instance reaches S3 with
  its instance profile: no Airflow secret is in the user data;
- after a preemption without a final sync, a small on-demand helper instance in the volume's zone
  mounts the volume read-only and copies new/changed files to S3 (:mod:`agent.backup`).
"""

from __future__ import annotations

import base64
import contextlib
import re
import time
from datetime import datetime, timezone
from typing import Any

from airflow_spot_provider.attempt import InstanceFacts, InstanceState
from airflow_spot_provider.backends.aws_pricing import on_demand_price
from airflow_spot_provider.backends.base import (
    ROLE_ATTEMPT,
    ROLE_DISK,
    ROLE_HELPER,
    BackupSaveRequest,
    BackupSaveResult,
    CloudResource,
    LaunchError,
    LaunchRequest,
    poll_until,
    prefix_parts,
)
from airflow_spot_provider.backends.cloud import CloudBackend, validate_common_options
from airflow_spot_provider.spec import check_keys

OPTIONS = (
    "region_name", "subnet_ids", "security_group_ids", "instance_profile", "key_name", "python", "agent_install",
    "requirements", "helper_instance_type", "helper_image", "on_demand_prices", "volume_type",
    "rebalance_as_notice", "wait_timeout",
)
#: "No capacity here now": try the next type/zone (docs/design.md, "Capacity is waited for without a worker slot").
CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity", "InsufficientCapacity", "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded",
    "InsufficientHostCapacity", "InsufficientReservedInstanceCapacity",
    # This type is not offered in this zone, or its family's vCPU / instance quota is used up: another
    # placement (type or zone) may still work.
    "Unsupported", "VcpuLimitExceeded", "InstanceLimitExceeded",
})
#: "Slow down": try the same placement again after a backoff.
THROTTLE_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException"})
#: Waits between RunInstances calls refused for throttling; None: give up (the operator backs off).
THROTTLE_RETRY_DELAYS = (1.0, 2.0, 4.0, None)
NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed", "InvalidVolume.NotFound"})
DATA_DEVICE = "/dev/sdf"
#: Where the data volume shows up inside the VM: the udev alias of its device name, the Xen name; the boot
#: script also looks for a non-root EBS NVMe disk (Nitro), never an instance-store one.
VM_DEVICES = ("/dev/sdf", "/dev/xvdf")
PROVIDER_TAG = ("spot-provider", "airflow-spot-provider")
ROLE_TAG = "spot-role"
GONE_STATES = ("terminated", "stopped")
#: EC2 ids: what a describe may be asked about (anything else is refused before it reaches the API).
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")
_ZONE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")
_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_DESCRIBE_BATCH = 1000


def _code(err: Exception) -> str:
    return getattr(err, "response", {}).get("Error", {}).get("Code", "")


def _tags(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in items or []}


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    return None


def _ended_at(inst: dict[str, Any]) -> float | None:
    """EC2 keeps the end time only in prose: ``User initiated (2026-11-29 20:00:00 GMT)``."""
    found = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) GMT\)", inst.get("StateTransitionReason") or "")
    if not found:
        return None
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def validate_options(options: dict[str, Any]) -> None:
    check_keys("backend_options", options, OPTIONS)
    subnets = options.get("subnet_ids")
    if subnets is not None and not (isinstance(subnets, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in subnets.items())):
        raise ValueError("backend_options.subnet_ids: must be a dict {availability zone: subnet id}")
    for key in ("security_group_ids",):
        value = options.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"backend_options.{key}: must be a list of strings")
    validate_common_options(options, ("on_demand_prices",))


class AwsBackend(CloudBackend):
    name = "aws"
    missing_grace = 60.0
    store_package = "s3fs"
    vm_devices = VM_DEVICES

    def __init__(self, conn_id: str | None = None, **options: Any) -> None:
        validate_options(options)
        super().__init__(conn_id=conn_id or "aws_default", **options)
        self._client: Any = None
        self._launch_client: Any = None
        self._async_client: Any = None
        self._async_stack: contextlib.AsyncExitStack | None = None

    # -- connection ----------------------------------------------------------------------------
    def _hook(self, **kwargs: Any) -> Any:
        from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook

        return EC2Hook(aws_conn_id=self.conn_id, region_name=self.options.get("region_name"), api_type="client_type",
                       **kwargs)

    @property
    def ec2_launch(self) -> Any:
        """A client that tries each RunInstances once: the SDK would retry a capacity refusal (HTTP 500) for
        seconds, while the next placement may have capacity now. Throttling is retried in :meth:`launch`."""
        if self._launch_client is None:
            from botocore.config import Config

            self._launch_client = self._hook(config=Config(retries={"total_max_attempts": 1})).conn
        return self._launch_client

    @property
    def ec2(self) -> Any:
        if self._client is None:
            self._client = self._hook().conn
        return self._client

    @property
    def region(self) -> str:
        return self.options.get("region_name") or self.ec2.meta.region_name

    def poll_key(self) -> tuple[str, ...]:
        return (self.name, self.conn_id, self.options.get("region_name") or "")

    def validate_machine(self, machine: Any) -> None:
        if not machine.instance_types:
            raise ValueError("machine.instance_types: the aws backend needs at least one EC2 instance type")
        for i, name in enumerate(machine.instance_types):
            if not _TYPE.match(name):
                raise ValueError(f"machine.instance_types[{i}]: {name!r} is not an EC2 instance type (like g5.xlarge)")
        for i, zone in enumerate(machine.zones):
            if not _ZONE.match(zone):
                raise ValueError(f"machine.zones[{i}]: {zone!r} is not an availability zone (like us-east-1a)")
        image = machine.image or ""
        if not (image.startswith("ami-") or image.startswith("resolve:ssm:")):
            raise ValueError("machine.image: the aws backend needs an AMI id ('ami-…') or an SSM parameter "
                             "('resolve:ssm:/aws/service/…')")
        subnets = self.options.get("subnet_ids") or {}
        missing = [z for z in machine.zones if subnets and z not in subnets]
        if missing:
            raise ValueError(f"backend_options.subnet_ids: no subnet for zone(s) {', '.join(missing)}")

    # -- building requests ---------------------------------------------------------------------
    def _tag_list(self, tags: dict[str, str], role: str) -> list[dict[str, str]]:
        merged = {**tags, ROLE_TAG: role, "Name": f"spot-{role}-{tags['spot-dag-id']}-{tags['spot-task-id']}"[:255]}
        return [{"Key": k, "Value": v} for k, v in merged.items()]

    def _placement(self, zone: str | None) -> dict[str, Any]:
        subnet = (self.options.get("subnet_ids") or {}).get(zone) if zone else None
        if subnet:
            return {"SubnetId": subnet}
        return {"Placement": {"AvailabilityZone": zone}} if zone else {}

    def _common(self) -> dict[str, Any]:
        params: dict[str, Any] = {"MinCount": 1, "MaxCount": 1, "InstanceInitiatedShutdownBehavior": "terminate",
                                  "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"}}
        if groups := self.options.get("security_group_ids"):
            params["SecurityGroupIds"] = list(groups)
        if profile := self.options.get("instance_profile"):
            params["IamInstanceProfile"] = {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
        if key := self.options.get("key_name"):
            params["KeyName"] = key
        return params

    def notice_source(self) -> dict[str, Any]:
        return {"source": "ec2-imds", "rebalance_as_notice": bool(self.options.get("rebalance_as_notice"))}

    def run_params(self, request: LaunchRequest) -> dict[str, Any]:
        tags = request.identity.tags(request.attempt)
        params = {
            **self._common(), **self._placement(request.zone),
            "ImageId": request.image, "InstanceType": request.instance_type, "ClientToken": request.call_token,
            "UserData": self.boot_script(request),
            "BlockDeviceMappings": [{"DeviceName": DATA_DEVICE, "Ebs": {
                "VolumeSize": request.disk_gb, "VolumeType": self.options.get("volume_type", "gp3"),
                "DeleteOnTermination": False, "Encrypted": True}}],
            "TagSpecifications": [{"ResourceType": kind, "Tags": self._tag_list(tags, ROLE_ATTEMPT)}
                                  for kind in ("instance", "volume")],
        }
        if request.market == "spot":
            spot: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
            if request.max_price_per_hour is not None:
                spot["MaxPrice"] = f"{request.max_price_per_hour:.6f}"
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
        return params

    # -- worker side ---------------------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> InstanceFacts:
        existing = self.find(request)
        if existing is not None:
            return existing
        params = self.run_params(request)
        for delay in THROTTLE_RETRY_DELAYS:
            try:
                response = self.ec2_launch.run_instances(**params)
                return self._facts(response["Instances"][0], priced=True)
            except Exception as err:
                code = _code(err)
                if code in CAPACITY_CODES:
                    raise LaunchError(code, str(err), move_on=True) from err
                if code not in THROTTLE_CODES:
                    raise
                if delay is None:  # still throttled: the operator waits on a timer, without a worker slot
                    raise LaunchError(code, str(err), move_on=False) from err
                time.sleep(delay)  # same ClientToken: a call that did get through is not repeated
        raise AssertionError("unreachable")

    def _describe(self, **kwargs: Any) -> list[dict[str, Any]]:
        found = []
        for page in self.ec2.get_paginator("describe_instances").paginate(**kwargs):
            for reservation in page["Reservations"]:
                found.extend(reservation["Instances"])
        return found

    def _by_tags(self, **tags: str) -> list[dict[str, Any]]:
        filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
        return self._describe(Filters=filters)

    def find(self, request: LaunchRequest) -> InstanceFacts | None:
        found = [i for i in self._by_tags(**{"spot-token": request.token, ROLE_TAG: ROLE_ATTEMPT})]
        if not found:
            return None
        newest = max(found, key=lambda i: _epoch(i.get("LaunchTime")) or 0)
        return self._facts(newest, priced=True)

    def _instance(self, instance_id: str) -> dict[str, Any] | None:
        try:
            found = self._describe(InstanceIds=[instance_id])
        except Exception as err:
            if _code(err) in NOT_FOUND_CODES:
                return None
            raise
        return found[0] if found else None

    def _spot_price(self, instance_type: str, zone: str) -> float | None:
        try:
            history = self.ec2.describe_spot_price_history(
                InstanceTypes=[instance_type], AvailabilityZone=zone, ProductDescriptions=["Linux/UNIX"],
                StartTime=datetime.now(timezone.utc), MaxResults=1)["SpotPriceHistory"]
        except Exception:  # noqa: BLE001 - a price is for the ledger only: never fail a launch over it
            return None
        return float(history[0]["SpotPrice"]) if history else None

    def _facts(self, inst: dict[str, Any], priced: bool = False, spot_status: str | None = None) -> InstanceFacts:
        state = inst["State"]["Name"]
        reason = (inst.get("StateReason") or {}).get("Code", "")
        gone = state in GONE_STATES
        kind = InstanceState.TERMINATED if gone else InstanceState.PENDING if state == "pending" \
            else InstanceState.RUNNING
        market = "spot" if inst.get("InstanceLifecycle") == "spot" else "on-demand"
        zone = (inst.get("Placement") or {}).get("AvailabilityZone")
        instance_type = inst.get("InstanceType")
        # The cloud's own words for a reclaim: the state reason, or the spot request's status code.
        reclaimed = bool(spot_status) and spot_status.startswith("instance-terminated-") \
            and spot_status != "instance-terminated-by-user"
        preempted = reason == "Server.SpotInstanceTermination" or reclaimed
        if spot_status and gone:
            reason = f"{reason} ({spot_status})" if reason else spot_status
        price = self._spot_price(instance_type, zone) if priced and market == "spot" else None
        on_demand = on_demand_price(instance_type, self.options.get("on_demand_prices")) if priced else None
        if priced and market == "on-demand":
            price = on_demand
        return InstanceFacts(
            instance_id=inst["InstanceId"], state=kind, reason=reason, preempted=preempted,
            guest_shutdown=gone and "InstanceInitiatedShutdown" in reason, zone=zone,
            instance_type=instance_type, market=market, launched_at=_epoch(inst.get("LaunchTime")),
            ended_at=_ended_at(inst) if gone else None, price_per_hour=price, on_demand_price_per_hour=on_demand,
        )

    def _wait(self, instance_id: str, states: tuple[str, ...]) -> dict[str, Any] | None:
        def reached() -> tuple[bool, dict[str, Any] | None]:
            inst = self._instance(instance_id)
            return inst is None or inst["State"]["Name"] in states, inst

        return poll_until(reached, timeout=self.wait_timeout(), interval=1.0, timed_out=lambda inst: (
            f"{instance_id} did not reach {'/'.join(states)} in time (it is {inst['State']['Name']})"))

    def terminate(self, instance_id: str) -> None:
        try:
            self.ec2.terminate_instances(InstanceIds=[instance_id])
        except Exception as err:
            if _code(err) in NOT_FOUND_CODES:
                return
            raise
        self._wait(instance_id, ("terminated",))  # its volumes are detached only then

    def cancel(self, instance_id: str, token: str | None = None, *, keep_disk: bool = False) -> None:
        """EC2 deletes the data volume with the instance (``DeleteOnTermination``); nothing waits for either."""
        inst = self._instance(instance_id)
        if inst is None or inst["State"]["Name"] == "terminated":
            if not keep_disk:  # gone already: the volume is detached and can be deleted now
                self.release(instance_id, token=token)
            return
        # Never through a helper: the volume it reads is attached to it at the same device.
        marked = not keep_disk and _tags(inst.get("Tags")).get(ROLE_TAG) == ROLE_ATTEMPT
        if marked and not self._delete_on_termination(instance_id, inst, True):
            super().cancel(instance_id, token)  # shutting down already, or the volume is elsewhere: wait
            return
        try:
            self.ec2.terminate_instances(InstanceIds=[instance_id])
        except Exception as err:
            if _code(err) in NOT_FOUND_CODES:
                return
            if marked:  # it lives on: a later preemption must leave its volume for backup-save
                with contextlib.suppress(Exception):
                    self._delete_on_termination(instance_id, inst, False)
            raise

    def _delete_on_termination(self, instance_id: str, inst: dict[str, Any], value: bool) -> bool:
        """Set the data volume's ``DeleteOnTermination``; False when EC2 cannot (not attached, shutting down)."""
        if not any(m.get("DeviceName") == DATA_DEVICE for m in inst.get("BlockDeviceMappings") or []):
            return False
        try:
            self.ec2.modify_instance_attribute(InstanceId=instance_id, BlockDeviceMappings=[
                {"DeviceName": DATA_DEVICE, "Ebs": {"DeleteOnTermination": value}}])
        except Exception as err:
            if _code(err) in ("IncorrectInstanceState", "InvalidInstanceAttributeValue", *NOT_FOUND_CODES):
                return False
            raise
        return True

    def _volumes(self, token: str) -> list[dict[str, Any]]:
        """The attempt's surviving data volumes (root volumes go with their instance)."""
        pages = self.ec2.get_paginator("describe_volumes").paginate(
            Filters=[{"Name": "tag:spot-token", "Values": [token]}])
        volumes = [v for page in pages for v in page["Volumes"]]
        return [v for v in volumes if all(a.get("Device") not in ("/dev/xvda", "/dev/sda1") for a in v["Attachments"])]

    @staticmethod
    def _fail(message: str) -> Any:
        raise ValueError(message)

    def _token(self, instance_id: str) -> str | None:
        inst = self._instance(instance_id)
        return _tags(inst.get("Tags")).get("spot-token") if inst else None

    def backup_save(self, request: BackupSaveRequest) -> BackupSaveResult:
        inst = self._instance(request.instance_id)
        token = request.token or _tags(inst.get("Tags") if inst else None).get("spot-token")
        volumes = [v for v in self._volumes(token) if v["State"] != "deleting"] if token else []
        if not volumes:
            return BackupSaveResult(skipped=True, reason="no data volume left to read")
        volume = volumes[0]
        helper = self._helper(inst, token, volume, request)
        if not any(a.get("InstanceId") == helper for a in volume["Attachments"]):
            self._wait(helper, ("running",) + GONE_STATES)
            self.ec2.attach_volume(VolumeId=volume["VolumeId"], InstanceId=helper, Device=DATA_DEVICE)
        return BackupSaveResult(helper_id=helper)

    def _helper(self, inst: dict[str, Any] | None, token: str, volume: dict[str, Any],
                request: BackupSaveRequest) -> str:
        """A small on-demand instance in the volume's zone that copies the volume to the store (idempotent)."""
        helpers = self._by_tags(**{"spot-token": token, ROLE_TAG: ROLE_HELPER})
        running = [i for i in helpers if i["State"]["Name"] not in GONE_STATES + ("shutting-down", "stopping")]
        if running:
            return running[0]["InstanceId"]
        tags = _tags((inst or volume).get("Tags"))  # the volume carries the same identity tags
        identity_tags = {k: v for k, v in tags.items() if k.startswith("spot-") and k != ROLE_TAG}
        response = self.ec2.run_instances(
            **self._common(), **self._placement(volume["AvailabilityZone"]),
            ImageId=self.options.get("helper_image") or (inst or {}).get("ImageId")
            or self._fail("backend_options.helper_image: needed once EC2 no longer lists the attempt's instance"),
            InstanceType=self.options.get("helper_instance_type", "t3.micro"),
            # A new token per helper: a retried backup-save must get a new helper, not the dead one back.
            ClientToken=f"{token}-backup-{len(helpers)}", UserData=self.helper_script(request),
            TagSpecifications=[{"ResourceType": "instance", "Tags": self._tag_list(identity_tags, ROLE_HELPER)}],
        )
        return response["Instances"][0]["InstanceId"]

    def finish_backup_save(self, instance_id: str, helper_id: str, marker: dict[str, Any] | None) -> BackupSaveResult:
        self.terminate(helper_id)  # detaches the volume; release() deletes it
        return self.backup_result(helper_id, marker)

    def release(self, instance_id: str, token: str | None = None) -> None:
        token = token or self._token(instance_id)
        if token:
            self._delete_volumes(self._volumes(token))

    def _delete_volumes(self, volumes: list[dict[str, Any]]) -> None:
        for volume in volumes:
            for attachment in volume["Attachments"]:
                with contextlib.suppress(Exception):  # already detaching/detached
                    self.ec2.detach_volume(VolumeId=volume["VolumeId"], InstanceId=attachment["InstanceId"],
                                           Force=True)
            self.delete_disk(volume["VolumeId"])

    def delete_disk(self, disk_id: str) -> None:
        def deleted() -> tuple[bool, str]:
            try:
                self.ec2.delete_volume(VolumeId=disk_id)
            except Exception as err:
                if _code(err) != "VolumeInUse" and _code(err) not in NOT_FOUND_CODES:
                    raise
                return _code(err) in NOT_FOUND_CODES, str(err)
            return True, ""

        poll_until(deleted, timeout=self.wait_timeout(), interval=1.0,
                   timed_out=lambda why: f"volume {disk_id} stayed in use: {why}")

    def list_instances(self) -> list[CloudResource]:
        instances = self._by_tags(**{PROVIDER_TAG[0]: PROVIDER_TAG[1]})
        pages = self.ec2.get_paginator("describe_volumes").paginate(
            Filters=[{"Name": f"tag:{PROVIDER_TAG[0]}", "Values": [PROVIDER_TAG[1]]}])
        by_token: dict[str, list[dict[str, Any]]] = {}
        for volume in (v for page in pages for v in page["Volumes"]):
            by_token.setdefault(_tags(volume.get("Tags")).get("spot-token", ""), []).append(volume)
        found, seen_tokens = [], set()
        for inst in instances:
            tags = _tags(inst.get("Tags"))
            role = tags.get(ROLE_TAG, ROLE_ATTEMPT)
            data = []
            if role == ROLE_ATTEMPT:
                seen_tokens.add(tags.get("spot-token", ""))
                data = [v for v in by_token.get(tags.get("spot-token", ""), []) if all(
                    a.get("Device") != inst.get("RootDeviceName") for a in v["Attachments"])]
            found.append(CloudResource(tags=tags, role=role, facts=self._facts(inst),
                                       disk_id=data[0]["VolumeId"] if data else None))
        for token, orphans in by_token.items():
            if token not in seen_tokens:  # its instance is no longer on record: the volume alone is left
                found.extend(CloudResource(tags=_tags(v.get("Tags")), role=ROLE_DISK, disk_id=v["VolumeId"])
                             for v in orphans)
        return found

    def console_url(self, instance_id: str) -> str | None:
        return f"https://console.aws.amazon.com/ec2/home?region={self.region}#InstanceDetails:instanceId={instance_id}"

    def storage_console_url(self, checkpoint_uri: str) -> str | None:
        bucket, prefix = prefix_parts(checkpoint_uri)
        return f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}?prefix={prefix}"

    def console_output(self, instance_id: str, tail: int = 20) -> list[str]:
        try:
            output = self.ec2.get_console_output(InstanceId=instance_id, Latest=True).get("Output") or ""
        except Exception:  # noqa: BLE001 - console output is a courtesy in the log
            return []
        try:
            text = base64.b64decode(output).decode(errors="replace")
        except ValueError:
            text = output
        return text.splitlines()[-tail:]

    # -- triggerer side ------------------------------------------------------------------------
    async def _aclient(self) -> Any:
        if self._async_client is None:
            self._async_stack = contextlib.AsyncExitStack()
            creator = await self._hook().get_async_conn()
            self._async_client = await self._async_stack.enter_async_context(creator)
        return self._async_client

    async def aclose(self) -> None:
        if self._async_stack is not None:
            await self._async_stack.aclose()
        self._async_stack = self._async_client = None

    async def describe(self, instance_ids: list[str]) -> dict[str, InstanceFacts]:
        client = await self._aclient()
        wanted = [i for i in instance_ids if _INSTANCE_ID.match(i)]
        facts = {i: InstanceFacts(i, InstanceState.MISSING, reason="not an EC2 instance id")
                 for i in instance_ids if i not in wanted}
        instances: list[dict[str, Any]] = []
        for start in range(0, len(wanted), _DESCRIBE_BATCH):
            instances.extend(await self._adescribe(client, wanted[start:start + _DESCRIBE_BATCH]))
        statuses = await self._spot_statuses(client, instances)
        for inst in instances:
            facts[inst["InstanceId"]] = self._facts(inst, spot_status=statuses.get(inst.get("SpotInstanceRequestId")))
        for missing in set(wanted) - {i["InstanceId"] for i in instances}:
            facts[missing] = InstanceFacts(missing, InstanceState.MISSING, reason="InvalidInstanceID.NotFound")
        return facts

    async def _adescribe(self, client: Any, ids: list[str]) -> list[dict[str, Any]]:
        """One call for many ids. EC2 refuses the whole call if one id is unknown: drop those and ask again."""
        while ids:
            try:
                instances, token = [], None
                while True:
                    page = await client.describe_instances(InstanceIds=ids, **({"NextToken": token} if token else {}))
                    instances.extend(i for r in page["Reservations"] for i in r["Instances"])
                    token = page.get("NextToken")
                    if not token:
                        return instances
            except Exception as err:
                if _code(err) != "InvalidInstanceID.NotFound":
                    raise
                unknown = set(re.findall(r"i-[0-9a-f]+", str(err)))
                if not unknown & set(ids):
                    raise
                ids = [i for i in ids if i not in unknown]
        return []

    async def _spot_statuses(self, client: Any, instances: list[dict[str, Any]]) -> dict[str, str]:
        """Spot request status codes (``instance-terminated-by-price``…) of the spot instances that are gone."""
        request_ids = [i["SpotInstanceRequestId"] for i in instances
                       if i.get("SpotInstanceRequestId") and i["State"]["Name"] in GONE_STATES + ("shutting-down",)]
        if not request_ids:
            return {}
        try:
            page = await client.describe_spot_instance_requests(SpotInstanceRequestIds=request_ids)
        except Exception:  # noqa: BLE001 - the state reason alone still classifies; this only adds detail
            return {}
        return {r["SpotInstanceRequestId"]: (r.get("Status") or {}).get("Code", "")
                for r in page.get("SpotInstanceRequests", [])}
