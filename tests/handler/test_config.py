"""Settings defaults that depend on where the process runs."""

from __future__ import annotations

import pytest

from handler.config import SettingError, Settings, available_cpus


def test_torch_threads_follow_lambdas_cpu_share_not_its_vcpu_count() -> None:
    cpus = available_cpus()
    threads = lambda **env: Settings.from_env(env).torch_threads
    assert threads() == cpus  # not on Lambda: every CPU this process may use
    assert threads(AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1769") == 1  # one CPU's worth of time
    assert threads(AWS_LAMBDA_FUNCTION_MEMORY_SIZE="2048") == 1  # 1.16 CPUs: a second thread would wait
    assert threads(AWS_LAMBDA_FUNCTION_MEMORY_SIZE="512") == 1
    assert threads(AWS_LAMBDA_FUNCTION_MEMORY_SIZE="3008") == min(cpus, 2)
    assert threads(AWS_LAMBDA_FUNCTION_MEMORY_SIZE="10240") == min(cpus, 6)
    assert threads(AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1769", TORCH_THREADS="4") == 4  # an explicit setting wins


@pytest.mark.parametrize(
    "name, value",
    [
        ("MAX_IMAGE_BYTES", "abc"),
        ("MAX_IMAGE_BYTES", "0"),
        ("MAX_S3_IMAGE_BYTES", "1e6"),
        ("MAX_IMAGE_PIXELS", "-5"),
        ("ARTIFACT_RETRY_S", "nan"),
        ("ARTIFACT_RETRY_S", "-1"),
        ("TORCH_THREADS", "two"),
        ("MIN_SCORE", "1.5"),
        ("MIN_SCORE", "inf"),
        ("LOG_LEVEL", "verbose"),
    ],
)
def test_a_setting_that_does_not_parse_is_misconfigured_naming_it(name: str, value: str) -> None:
    with pytest.raises(SettingError) as raised:
        Settings.from_env({name: value})
    assert name in str(raised.value) and repr(value) in str(raised.value)


def test_blank_settings_take_their_defaults_and_good_ones_parse() -> None:
    blank = Settings.from_env({"MAX_IMAGE_BYTES": " ", "MIN_SCORE": "", "TORCH_THREADS": "", "LOG_LEVEL": ""})
    assert blank.max_image_bytes == Settings.max_image_bytes and blank.min_score == 0 and blank.log_level == "INFO"
    given = Settings.from_env({"MAX_IMAGE_BYTES": "1000", "MIN_SCORE": "0.25", "LOG_LEVEL": "debug"})
    assert (given.max_image_bytes, given.min_score, given.log_level) == (1000, 0.25, "DEBUG")
