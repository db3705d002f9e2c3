import pytest

from airflow_spot_provider.operators.spot_training import SpotTrainingOperator
from airflow_spot_provider.spec import JobSpec, SpotSpecError

GOOD = {"command": ["python", "train.py"], "checkpoint_uri": "file:///tmp/ckpt/"}


def build(**overrides):
    return SpotTrainingOperator(task_id="train", **{**GOOD, **overrides})


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"backend": "azure"}, "backend"),
        ({"command": []}, "command"),
        ({"command": "python train.py"}, "command"),
        ({"command": ["python", 3]}, "command[1]"),
        ({"command": [" "]}, "command[0]"),
        ({"checkpoint_uri": ""}, "checkpoint_uri"),
        ({"checkpoint_uri": "/tmp/ckpt"}, "checkpoint_uri"),
        ({"checkpoint_uri": "s3://bucket/x"}, "checkpoint_uri"),  # s3 with the local backend
        ({"checkpoint_uri": "file://relative/dir"}, "checkpoint_uri"),
        ({"checkpoint_uri": "file:///tmp/../etc"}, "checkpoint_uri"),
        ({"max_preemptions": -1}, "max_preemptions"),
        ({"max_preemptions": 1.5}, "max_preemptions"),
        ({"max_preemptions": True}, "max_preemptions"),
        ({"keep_checkpoints": 0}, "keep_checkpoints"),
        ({"keep_checkpoints": 2.5}, "keep_checkpoints"),
        ({"keep_checkpoints": "3"}, "keep_checkpoints"),
        ({"keep_checkpoints": True}, "keep_checkpoints"),
        ({"sync_interval": 0}, "sync_interval"),
        ({"poll_interval": float("nan")}, "poll_interval"),
        ({"describe_failure_timeout": 0}, "describe_failure_timeout"),
        ({"describe_failure_timeout": "600"}, "describe_failure_timeout"),
        ({"describe_failure_timeout": True}, "describe_failure_timeout"),
        ({"resume_args": ["--from", "{other}"]}, "resume_args[1]"),
        ({"env": {"SPOT_ATTEMPT": "3"}}, "env['SPOT_ATTEMPT']"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"env": {"GOOD": 1}}, "env['GOOD']"),
        ({"pass_env": ["NOT VALID"]}, "pass_env"),
        ({"pass_env": ["SPOT_ATTEMPT"]}, "pass_env"),
        ({"backend_options": {"prices": ["x"]}}, "backend_options.prices"),
        ({"checkpoint_pattern": "ckpt-\\d+"}, "checkpoint_pattern"),
        ({"checkpoint_pattern": "(unclosed"}, "checkpoint_pattern"),
        ({"machine": {"gpus": 1}}, "machine"),
        ({"machine": {"market": "reserved"}}, "machine.market"),
        ({"machine": {"instance_types": ["local.nope"]}}, "machine.instance_types[0]"),
        ({"machine": {"disk_gb": 0}}, "machine.disk_gb"),
        ({"backend_options": {"preempt_afterr": [1]}}, "backend_options"),
        ({"backend_options": {"preempt_after": [-1]}}, "backend_options.preempt_after[0]"),
        ({"backend_options": {"preempt_after": [{"after": 1, "grace": 2}]}}, "backend_options.preempt_after[0]"),
        ({"backend_options": {"preempt_after": [{"after": 1, "at_step": 2}]}}, "backend_options.preempt_after[0]"),
        ({"backend_options": {"preempt_after": [{"at_step": 1.5}]}}, "backend_options.preempt_after[0].at_step"),
        ({"backend_options": {"boot_seconds": -1}}, "backend_options.boot_seconds"),
        ({"backend_options": {"prices": {"x": {"spot": 1}}}}, "backend_options.prices['x']"),
    ],
)
def test_bad_spec_fails_at_construction_naming_the_field(overrides, field):
    with pytest.raises(SpotSpecError) as err:
        build(**overrides)
    assert str(err.value).startswith(f"{field}:"), str(err.value)


AWS_MACHINE = {"instance_types": ["g5.xlarge"], "zones": ["us-east-1a"], "image": "ami-0123456789abcdef0"}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"machine": {**AWS_MACHINE, "image": None}}, "machine.image"),
        ({"machine": {**AWS_MACHINE, "instance_types": []}}, "machine.instance_types"),
        ({"machine": {**AWS_MACHINE, "instance_types": ["g5 xlarge"]}}, "machine.instance_types[0]"),
        ({"machine": {**AWS_MACHINE, "zones": ["us-east-1"]}}, "machine.zones[0]"),
        ({"backend_options": {"subnets": {}}}, "backend_options"),
        ({"backend_options": {"subnet_ids": {"us-east-1b": "subnet-1"}}}, "backend_options.subnet_ids"),
        ({"backend_options": {"agent_install": "pip"}}, "backend_options.agent_install"),
        ({"checkpoint_uri": "gs://bucket/x/"}, "checkpoint_uri"),
    ],
)
def test_aws_spec_errors_name_the_field_without_calling_aws(overrides, field):
    with pytest.raises(SpotSpecError) as err:
        build(**{"backend": "aws", "checkpoint_uri": "s3://bucket/prefix/", "machine": AWS_MACHINE, **overrides})
    assert str(err.value).startswith(f"{field}:"), str(err.value)
    assert build(backend="aws", checkpoint_uri="s3://bucket/prefix/", machine=AWS_MACHINE).backend == "aws"


def test_templated_uri_is_checked_up_to_the_template_and_again_after_rendering():
    op = build(checkpoint_uri="file:///data/{{ ds }}/")
    assert op.checkpoint_uri == "file:///data/{{ ds }}/"
    with pytest.raises(SpotSpecError, match="checkpoint_uri"):
        build(checkpoint_uri="s3://bucket/{{ ds }}/")
    with pytest.raises(SpotSpecError, match="still contains a template"):
        JobSpec(**GOOD).rendered(checkpoint_uri="file:///x/{{ ds }}")


def test_defaults():
    op = build()
    assert op.spec.backend == "local" and op.spec.max_preemptions == 10 and op.spec.machine.market == "spot"
    assert op.spec.keep_checkpoints is None and build(keep_checkpoints=1).spec.keep_checkpoints == 1
