"""What the rendered objects promise: probes, security, GPUs, wiring between components, scaling, network."""

from __future__ import annotations

import base64
import json
import posixpath

import pytest

from tests.deploy.chart import (
    VALUE_SETS,
    Manifest,
    container,
    container_port,
    env_of,
    pod_labels,
    pod_spec,
    render,
    selects,
    values_of,
    workloads,
)

CONTAINERS = {"gateway": "gateway", "vllm": "vllm", "redis": "redis", "router": "router"}
# Paths inside the containers, not on this machine.
CONTAINER_TMP = "/tmp"  # noqa: S108
CONTAINER_SHM = "/dev/shm"  # noqa: S108


def config_data(value_set: str, *overrides: str) -> dict[str, str]:
    data: dict[str, str] = render(value_set, *overrides).one("ConfigMap", "gateway")["data"]
    return data


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_container_runs_locked_down(value_set: str) -> None:
    rendered = render(value_set)
    checked = 0
    for workload in workloads(rendered):
        spec = pod_spec(workload)
        pod_security = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for item in spec["containers"] + spec.get("initContainers", []):
            where = f"{workload['metadata']['name']}/{item['name']}"
            security = item["securityContext"]
            assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, where
            assert pod_security.get("runAsUser", 0) != 0, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            seccomp = security.get("seccompProfile", pod_security.get("seccompProfile"))
            assert seccomp == {"type": "RuntimeDefault"}, where
            resources = item["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert "memory" in resources["limits"], where
            tmp_mounts = [m for m in item["volumeMounts"] if m["mountPath"] == CONTAINER_TMP]
            assert tmp_mounts, f"{where}: no writable /tmp"
            assert tmp_mounts[0]["name"] in tmp_volumes, where
            checked += 1
    assert checked == len(list(workloads(rendered)))


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_gateway_probes_health_and_ready_on_its_port(value_set: str) -> None:
    deployment = render(value_set).one("Deployment", "gateway")
    gateway = container(deployment, "gateway")
    port = values_of(value_set)["gateway"]["port"]
    assert container_port(deployment, "gateway", "http") == port
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert gateway["startupProbe"]["httpGet"]["path"] == "/health"
    assert config_data(value_set)["TWICE_SERVER__PORT"] == str(port)
    assert config_data(value_set)["TWICE_SERVER__HOST"] == "0.0.0.0"


def test_gateway_port_follows_the_value() -> None:
    rendered = render("default", "gateway.port=9100")
    assert container_port(rendered.one("Deployment", "gateway"), "gateway", "http") == 9100
    assert config_data("default", "gateway.port=9100")["TWICE_SERVER__PORT"] == "9100"
    service_port = rendered.one("Service", "gateway")["spec"]["ports"][0]
    assert service_port["targetPort"] == "http"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_services_select_their_pods(value_set: str) -> None:
    rendered = render(value_set)
    for service in rendered.of_kind("Service"):
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        targets = [w for w in workloads(rendered) if selects(service["spec"]["selector"], pod_labels(w))]
        assert [t["metadata"]["labels"]["app.kubernetes.io/component"] for t in targets] == [component]
        for port in service["spec"]["ports"]:
            container_port(targets[0], CONTAINERS[component], port["targetPort"])


def test_vllm_deployment_asks_for_its_gpus_and_serves_what_psr_needs() -> None:
    values = values_of("gpu-values")["vllm"]
    deployment = render("gpu-values").one("Deployment", "vllm")
    vllm = container(deployment, "vllm")
    gpus = values["tensorParallelSize"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == gpus == 1
    assert vllm["resources"]["requests"]["nvidia.com/gpu"] == gpus
    assert vllm["image"].startswith("vllm/vllm-openai:")
    assert vllm["args"][0] == values["model"]
    assert "--enable-prefix-caching" in vllm["args"]
    assert "--max-logprobs=20" in vllm["args"]
    assert f"--tensor-parallel-size={gpus}" in vllm["args"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert container_port(deployment, "vllm", "http") == 8000
    spec = pod_spec(deployment)
    assert spec["nodeSelector"] == values["nodeSelector"]
    assert spec["tolerations"] == values["tolerations"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in vllm["volumeMounts"]}
    assert volumes[mounts[CONTAINER_SHM]]["emptyDir"]["medium"] == "Memory"
    weights = volumes[mounts[values["storage"]["mountPath"]]]
    claim = render("gpu-values").one("PersistentVolumeClaim", "vllm")
    assert weights["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_tensor_parallelism_sets_the_gpu_count() -> None:
    vllm = container(render("gpu-values", "vllm.tensorParallelSize=4").one("Deployment", "vllm"), "vllm")
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert "--tensor-parallel-size=4" in vllm["args"]


@pytest.mark.parametrize(
    ("storage", "volume_key"),
    [("emptyDir", "emptyDir"), ("hostPath", "hostPath"), ("pvc", "persistentVolumeClaim")],
)
def test_weights_volume_follows_the_storage_type(storage: str, volume_key: str) -> None:
    rendered = render("gpu-values", f"vllm.storage.type={storage}")
    volumes = {v["name"]: v for v in pod_spec(rendered.one("Deployment", "vllm"))["volumes"]}
    assert volume_key in volumes["models"]
    assert (rendered.find("PersistentVolumeClaim", "vllm") is not None) == (storage == "pvc")


def test_gateway_calls_the_releases_vllm_service() -> None:
    rendered = render("gpu-values")
    service = rendered.one("Service", "vllm")
    data = config_data("gpu-values")
    assert data["TWICE_BACKEND"] == "vllm"
    expected = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert data["TWICE_VLLM__UPSTREAM"] == expected
    assert not data["TWICE_VLLM__UPSTREAM"].endswith("/v1")


def test_an_external_vllm_upstream_wins_and_no_vllm_is_deployed() -> None:
    overrides = ("gateway.backend=vllm", "gateway.vllmUpstream=http://vllm.gpu.svc:8001")
    rendered = render("default", *overrides)
    assert config_data("default", *overrides)["TWICE_VLLM__UPSTREAM"] == "http://vllm.gpu.svc:8001"
    assert rendered.find("Deployment", "vllm") is None


def test_embedded_backend_deploys_no_vllm_and_sizes_llama_threads_to_the_cpu_limit() -> None:
    rendered = render("cpu-values")
    data = config_data("cpu-values")
    assert data["TWICE_BACKEND"] == "embedded"
    assert "TWICE_VLLM__UPSTREAM" not in data
    assert rendered.find("Deployment", "vllm") is None
    cpu_limit = values_of("cpu-values")["gateway"]["resources"]["limits"]["cpu"]
    assert data["TWICE_EMBEDDED__N_THREADS"] == str(int(cpu_limit))
    assert config_data("cpu-values", "gateway.resources.limits.cpu=3500m")["TWICE_EMBEDDED__N_THREADS"] == "3"
    assert config_data("cpu-values", "gateway.embeddedThreads=6")["TWICE_EMBEDDED__N_THREADS"] == "6"


def test_gateway_gets_the_url_of_the_releases_redis() -> None:
    rendered = render("cpu-values")
    service = rendered.one("Service", "redis")
    statefulset = rendered.one("StatefulSet", "redis")
    port = service["spec"]["ports"][0]["port"]
    assert config_data("cpu-values")["TWICE_REDIS__URL"] == f"redis://{service['metadata']['name']}:{port}/0"
    assert container_port(statefulset, "redis", "redis") == port
    args = container(statefulset, "redis")["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-lru"


def test_external_redis_replaces_the_releases_redis() -> None:
    overrides = ("redis.enabled=false", "redis.external.url=rediss://cache.example:6380/2")
    rendered = render("default", *overrides)
    assert rendered.find("StatefulSet", "redis") is None
    assert rendered.find("Service", "redis") is None
    assert config_data("default", *overrides)["TWICE_REDIS__URL"] == "rediss://cache.example:6380/2"


def test_external_redis_url_from_a_secret_stays_out_of_the_configmap() -> None:
    overrides = ("redis.enabled=false", "redis.external.existingSecret=redis-creds")
    rendered = render("default", *overrides)
    assert "TWICE_REDIS__URL" not in config_data("default", *overrides)
    reference = env_of(rendered.one("Deployment", "gateway"), "gateway")["TWICE_REDIS__URL"]
    assert reference["valueFrom"]["secretKeyRef"] == {"name": "redis-creds", "key": "redis-url"}


def test_experiments_reach_the_configmap_and_the_seed_file_path() -> None:
    rendered = render("cpu-values")
    configmap = rendered.one("ConfigMap", "gateway")
    seed_file = configmap["data"]["TWICE_EXPERIMENTS__SEED_FILE"]
    assert seed_file == "/etc/twice/experiments.json"
    stored = json.loads(base64.b64decode(configmap["binaryData"]["experiments.json"]))
    assert stored == values_of("cpu-values")["experiments"]
    assert stored, "ci/cpu-values.yaml should carry an experiment"
    # The file is mounted where the variable points, from this ConfigMap.
    deployment = rendered.one("Deployment", "gateway")
    mount = next(m for m in container(deployment, "gateway")["volumeMounts"] if m["name"] == "experiments")
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == "experiments")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert mount["mountPath"] == posixpath.dirname(seed_file)
    assert volume["configMap"]["items"] == [
        {"key": "experiments.json", "path": posixpath.basename(seed_file)}
    ]
    env_from = container(deployment, "gateway")["envFrom"]
    assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in env_from


def test_no_experiments_means_no_seed_file() -> None:
    configmap = render("default").one("ConfigMap", "gateway")
    assert "TWICE_EXPERIMENTS__SEED_FILE" not in configmap["data"]
    assert "binaryData" not in configmap


def test_settings_change_rolls_the_gateway_pods() -> None:
    def checksum(*overrides: str) -> str:
        deployment = render("default", *overrides).one("Deployment", "gateway")
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum() != checksum("plan.strategies=psr")


def test_plan_values_reach_the_gateway() -> None:
    values = values_of("cpu-values")["plan"]
    data = config_data("cpu-values")
    assert data["TWICE_PLAN__STRATEGIES"] == values["strategies"]
    assert data["TWICE_PLAN__ROUNDS"] == str(values["rounds"])
    assert data["TWICE_PLAN__MAX_ROUNDS"] == str(values["maxRounds"])
    assert config_data("cpu-values", "plan.rounds=3")["TWICE_PLAN__ROUNDS"] == "3"


def secret_env(value_set: str) -> dict[str, Manifest]:
    env = env_of(render(value_set).one("Deployment", "gateway"), "gateway")
    return {name: env[name]["valueFrom"]["secretKeyRef"] for name in env if name.startswith("TWICE_AUTH__")}


def test_api_keys_and_admin_key_come_from_the_charts_secret() -> None:
    secret = render("cpu-values").one("Secret", "gateway")
    auth = values_of("cpu-values")["auth"]
    decoded = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    refs = secret_env("cpu-values")
    assert {ref["name"] for ref in refs.values()} == {secret["metadata"]["name"]}
    assert decoded[refs["TWICE_AUTH__API_KEYS"]["key"]] == ",".join(auth["apiKeys"])
    assert decoded[refs["TWICE_AUTH__ADMIN_KEY"]["key"]] == auth["adminKey"]
    assert "TWICE_AUTH__API_KEYS" not in config_data("cpu-values")


def test_existing_secret_replaces_the_charts_secret() -> None:
    rendered = render("gpu-values")
    assert rendered.of_kind("Secret") == []
    existing = values_of("gpu-values")["auth"]["existingSecret"]
    assert {ref["name"] for ref in secret_env("gpu-values").values()} == {existing}


def test_a_generated_admin_key_is_long_and_random() -> None:
    def admin_key(release_salt: str) -> str:
        secret = render("default", f"commonLabels.salt={release_salt}").one("Secret", "gateway")
        return base64.b64decode(secret["data"]["admin-key"]).decode()

    first, second = admin_key("a"), admin_key("b")
    assert len(first) >= 32
    assert first != second


@pytest.mark.parametrize(
    ("value_set", "has_hpa", "has_pdb"),
    [
        ("default", False, True),
        ("cpu-values", False, False),
        ("gpu-values", True, True),
    ],
)
def test_autoscaler_and_disruption_budget_per_value_set(value_set: str, has_hpa: bool, has_pdb: bool) -> None:
    rendered = render(value_set)
    deployment = rendered.one("Deployment", "gateway")
    hpa = rendered.find("HorizontalPodAutoscaler", "gateway")
    assert (hpa is not None) == has_hpa
    assert (rendered.find("PodDisruptionBudget", "gateway") is not None) == has_pdb
    scaling = values_of(value_set)["gateway"]["autoscaling"]
    if hpa is None:
        assert deployment["spec"]["replicas"] == values_of(value_set)["gateway"]["replicaCount"]
        return
    # The HPA owns the replica count; a fixed one in the Deployment would fight it on every upgrade.
    assert "replicas" not in deployment["spec"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
        scaling["minReplicas"],
        scaling["maxReplicas"],
    )
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Pods"]["pods"]["metric"]["name"] == scaling["requestsPerSecond"]["metricName"]
    assert metrics["Resource"]["resource"]["target"]["averageUtilization"] == 70


def test_disruption_budget_selects_gateway_pods() -> None:
    rendered = render("gpu-values")
    pdb = rendered.one("PodDisruptionBudget", "gateway")
    assert pdb["spec"]["minAvailable"] == values_of("gpu-values")["gateway"]["pdb"]["minAvailable"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(rendered.one("Deployment", "gateway")))
    assert not selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(rendered.one("Deployment", "vllm")))


def test_network_policies_let_only_the_gateway_reach_vllm_and_redis() -> None:
    rendered = render("gpu-values")
    gateway_pods = pod_labels(rendered.one("Deployment", "gateway"))
    policies = {
        component: rendered.one("NetworkPolicy", component) for component in ("gateway", "vllm", "redis")
    }
    targets = {
        "gateway": rendered.one("Deployment", "gateway"),
        "vllm": rendered.one("Deployment", "vllm"),
        "redis": rendered.one("StatefulSet", "redis"),
    }
    for component, policy in policies.items():
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        assert selects(spec["podSelector"]["matchLabels"], pod_labels(targets[component])), component
        [rule] = spec["ingress"]
        [port] = rule["ports"]
        container_port(targets[component], CONTAINERS[component], port["port"])
        if component == "gateway":
            assert "from" not in rule  # clients come from anywhere, on the one port
            continue
        [peer] = rule["from"]
        assert set(peer) == {"podSelector"}
        assert selects(peer["podSelector"]["matchLabels"], gateway_pods), component
        assert not selects(peer["podSelector"]["matchLabels"], pod_labels(targets[component])), component
    assert render("default").of_kind("NetworkPolicy") == []


def test_service_monitor_scrapes_the_gateway_metrics_endpoint() -> None:
    rendered = render("gpu-values")
    monitor = rendered.one("ServiceMonitor", "gateway")
    service = rendered.one("Service", "gateway")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert render("default").find("ServiceMonitor", "gateway") is None
