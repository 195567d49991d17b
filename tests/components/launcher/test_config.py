"""LaunchConfig and friends reject bad values on construction, naming the field."""

import pytest

from components.launcher.config import DataVolume, LaunchConfig, Resources, Toleration, check_kind


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: LaunchConfig(name="Bad_Name"), "name"),
        (lambda: LaunchConfig(name="x" * 53), "name"),
        (lambda: LaunchConfig(namespace="-ns"), "namespace"),
        (lambda: LaunchConfig(image="has space:1"), "image"),
        (lambda: LaunchConfig(workers=0), "workers"),
        (lambda: LaunchConfig(workers=True), "workers"),
        (lambda: LaunchConfig(port=80), "port"),
        (lambda: LaunchConfig(trainer_args=("--a\n--b",)), "trainer_args"),
        (lambda: LaunchConfig(image_pull_policy="Sometimes"), "image_pull_policy"),
        (lambda: LaunchConfig(backoff_limit_per_index=-1), "backoff_limit_per_index"),
        (lambda: LaunchConfig(active_deadline_seconds=0), "active_deadline_seconds"),
        (lambda: LaunchConfig(active_deadline_seconds=True), "active_deadline_seconds"),
        (lambda: LaunchConfig(tmp_size_limit="0"), "tmp_size_limit"),
        (lambda: LaunchConfig(shm_size_limit="33Gi"), "shm_size_limit"),
        (lambda: Resources(cpu_request="lots"), "cpu_request"),
        (lambda: Resources(cpu_request="9", cpu_limit="8"), "cpu_request"),
        (lambda: Resources(memory_request="64Gi", memory_limit="32Gi"), "memory_request"),
        (lambda: Resources(gpus=-1), "gpus"),
        (lambda: DataVolume(claim_name=None, host_path=None), "claim_name"),
        (lambda: DataVolume(claim_name="c", host_path="/x"), "claim_name"),
        (lambda: DataVolume(claim_name=None, host_path="relative"), "host_path"),
        (lambda: DataVolume(mount_path="/tmp"), "mount_path"),
        (lambda: DataVolume(size="big"), "size"),
        (lambda: DataVolume(access_mode="ReadWriteAll"), "access_mode"),
        (lambda: Toleration(operator="Equal"), "Equal"),
        (lambda: Toleration(effect="Sometimes"), "effect"),
    ],
)
def test_invalid_values_raise_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_defaults_are_valid_and_one_gpu():
    config = LaunchConfig()
    assert config.workers == 1 and config.resources.gpus == 1
    assert config.volume.claim_name and config.volume.host_path is None


def test_kind_job_takes_one_worker():
    with pytest.raises(ValueError, match="workers=2"):
        check_kind("job", LaunchConfig(workers=2))
    with pytest.raises(ValueError, match="kind"):
        check_kind("mpijob", LaunchConfig())
    check_kind("indexed", LaunchConfig(workers=2))


def test_trainjob_name_is_an_rfc1035_label():
    """The Trainer v2.3.0 TrainJob CRD's CEL rule (not evaluated by jsonschema), checked before any submit."""
    with pytest.raises(ValueError, match="name='7train' must start with a letter for kind 'trainjob'"):
        check_kind("trainjob", LaunchConfig(name="7train", workers=2))
    check_kind("indexed", LaunchConfig(name="7train", workers=2))  # a DNS label is enough elsewhere


@pytest.mark.parametrize("workers, longest_ok", [(2, 48), (10, 48), (11, 47), (1024, 45)])
def test_trainjob_name_leaves_room_for_jobset_pod_names(workers, longest_ok):
    """JobSet v0.12.0 refuses a JobSet whose pod `<name>-node-0-<index>-abcde` exceeds 63 characters."""
    check_kind("trainjob", LaunchConfig(name="t" * longest_ok, workers=workers))
    if longest_ok < 52:
        with pytest.raises(ValueError, match=f"use a name of at most {longest_ok} characters"):
            check_kind("trainjob", LaunchConfig(name="t" * (longest_ok + 1), workers=workers))


def test_cluster_runtime_only_with_trainjob():
    with pytest.raises(ValueError, match="cluster_runtime=True applies to kind 'trainjob' only, not 'indexed'"):
        check_kind("indexed", LaunchConfig(workers=2, cluster_runtime=True))
    check_kind("trainjob", LaunchConfig(workers=2, cluster_runtime=True))
