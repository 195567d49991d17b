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
