"""`helm lint` of every value set; the values schema and the chart refusing values that cannot work."""

from __future__ import annotations

import pytest

from tests.deploy.chart import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    helm,
    render,
    render_error,
    values_of,
)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_passes_strict(value_set: str) -> None:
    args = ["lint", "--strict", str(CHART_DIR)]
    values_file = VALUE_SETS[value_set]
    if values_file is not None:
        args += ["--values", str(values_file)]
    result = helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


@pytest.mark.parametrize(
    ("override", "named_in_error"),
    [
        ("gateway.backend=tpu", "gateway/backend"),
        ("plan.strategies=psr;rm", "plan/strategies"),
        ("plan.rounds=many", "plan/rounds"),
        ("vllm.gpuMemoryUtilization=1.5", "vllm/gpuMemoryUtilization"),
        ("vllm.storage.type=nfs", "vllm/storage/type"),
        ("gateway.vllmUpstream=http://vllm:8000/v1", "gateway/vllmUpstream"),
        ("gateway.limts.maxTokens=10", "limts"),
        ("redis.external.url=http://not-redis", "redis/external/url"),
    ],
)
def test_schema_rejects_bad_values(override: str, named_in_error: str) -> None:
    assert named_in_error in render_error("default", override)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("gateway.backend=vllm",), "needs vllm.enabled=true or gateway.vllmUpstream"),
        (("redis.external.url=redis://cache:6379/0",), "either redis.enabled or redis.external"),
        (("gateway.workers=4",), "embedded backend runs one worker"),
        (
            ("gateway.autoscaling.enabled=true", "gateway.autoscaling.targetCPUUtilizationPercentage=0"),
            "needs a CPU target or requestsPerSecond",
        ),
    ],
)
def test_chart_refuses_combinations_that_cannot_work(overrides: tuple[str, ...], message: str) -> None:
    assert message in render_error("default", *overrides)


@pytest.mark.parametrize(
    ("value_set", "model"), [("cpu-values", "qwen2.5-coder-1.5b-instruct"), ("gpu-values", None)]
)
def test_notes_say_how_to_call_the_gateway(value_set: str, model: str | None) -> None:
    """NOTES.txt as `helm install` prints it (a client-side dry run needs no cluster)."""
    values_file = VALUE_SETS[value_set]
    assert values_file is not None
    result = helm(
        "install",
        RELEASE,
        str(CHART_DIR),
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
        "--values",
        str(values_file),
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    gateway_service = render(value_set).one("Service", "gateway")["metadata"]["name"]
    assert f"kubectl -n {NAMESPACE} port-forward service/{gateway_service} 8000:" in notes
    assert "curl -s http://127.0.0.1:8000/v1/chat/completions" in notes
    assert 'openai.OpenAI(base_url="http://127.0.0.1:8000/v1"' in notes
    served = model or values_of(value_set)["vllm"]["servedModelName"]
    assert f'"model": "{served}"' in notes
