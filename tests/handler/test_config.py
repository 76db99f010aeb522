"""Settings defaults that depend on where the process runs."""

from __future__ import annotations

from handler.config import Settings, available_cpus


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
