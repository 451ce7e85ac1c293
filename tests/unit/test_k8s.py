"""deploy/k8s, checked offline: every manifest against the Kubernetes schemas (kubernetes-validate, strict:
no unknown field), the Kustomize base listing every file, and the wiring a schema cannot see: selectors that
select, probe and Service ports that exist, the operations port where the code serves it, secrets by
reference only, each container's variables those of the same service in docker-compose.yml, commands that
are ``llmgw`` sub-commands. When ``kubectl`` is installed, the base is also built (``kubectl kustomize``,
offline) and the built output validated.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from llmgw_cli.main import build_parser
from llmgw_common.config import load_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
# the oldest Kubernetes release still maintained when this was written, and the newest the package knows
K8S_VERSIONS = ("1.33.0", latest_version())
SECRET = "llmgw-secrets"
METRICS_PORT = 9100
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def _documents() -> list[tuple[str, dict]]:
    out = []
    for name in KUSTOMIZATION["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                out.append((name, doc))
    return out


DOCS = _documents()


def of_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _f, d in DOCS if d["kind"] == kind}


WORKLOADS = {**of_kind("Deployment"), **of_kind("StatefulSet")}


def component(workload: dict) -> str:
    return workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def container(workload: dict) -> dict:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def env(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env") or []}


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---- the schemas -----------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest():
    listed = set(KUSTOMIZATION["resources"])
    generated = {f for g in KUSTOMIZATION["configMapGenerator"] for f in g.get("files", [])}
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed | generated == on_disk, f"not listed: {sorted(on_disk - listed - generated)}"
    assert all((K8S / name).is_file() for name in listed | generated)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(version):
    assert DOCS
    for name, doc in DOCS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} is not valid for Kubernetes {version}: "
                        f"{exc.message} at {'.'.join(map(str, exc.path))}")


def test_the_validator_refuses_an_invalid_manifest():
    """A guard for the check above: a misspelt field fails it."""
    deployment = yaml.safe_load(yaml.safe_dump(of_kind("Deployment")["llmgw-edge"]))
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_the_built_base_is_valid(tmp_path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: each file was validated on its own")
    run = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    built = [d for d in yaml.safe_load_all(run.stdout) if d]
    for doc in built:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    config_maps = [d["metadata"]["name"] for d in built if d["kind"] == "ConfigMap"]
    assert any(n.startswith("llmgw-config-") for n in config_maps)  # hashed: a change rolls the pods
    for doc in built:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            assert re.fullmatch(r"llmgw:\d+\.\d+\.\d+", container(doc)["image"])


# ---- the workloads ---------------------------------------------------------------------------------------


def test_a_workload_for_every_service_and_the_migration_job():
    assert {component(w): w["kind"] for w in WORKLOADS.values()} == {
        "edge": "Deployment", "router": "Deployment", "pricing": "Deployment", "ui-api": "Deployment",
        "usage": "StatefulSet"}  # usage: a state volume per replica (its insert journal)
    parser = build_parser()
    for w in WORKLOADS.values():
        args = container(w)["args"]
        assert args == [component(w)] and callable(parser.parse_args(args).func)
    (job,) = of_kind("Job").values()
    assert container(job)["args"] == ["migrate"] and callable(parser.parse_args(["migrate"]).func)
    # two: sessions, the failed-login count and the config are in NATS and Redis (test_ui_api_replicas.py)
    ui_api = WORKLOADS["llmgw-ui-api"]["spec"]
    assert ui_api["replicas"] == 2 and ui_api["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def _port_names(c: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c.get("ports") or []}


def test_probes_hit_the_operations_port():
    for w in WORKLOADS.values():
        c = container(w)
        ports = _port_names(c)
        assert ports["metrics"] == METRICS_PORT == int(env(c)["LLMGW_METRICS_PORT"]["value"])
        assert w["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT)
        paths = {}
        for kind in ("readinessProbe", "livenessProbe"):
            probe = c[kind]["httpGet"]
            assert probe["port"] == "metrics", f"{w['metadata']['name']}: {kind} on {probe['port']}"
            paths[kind] = probe["path"]
        # llmgw_common.ops_port (every service's, the NATS services' through ServiceRuntime): ready vs alive
        assert paths == {"readinessProbe": "/readyz", "livenessProbe": "/livez"}, w["metadata"]["name"]


def test_pod_security_and_resources():
    for doc in [*WORKLOADS.values(), *of_kind("Job").values()]:
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
        c = container(doc)
        assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
        assert c["resources"]["limits"]["cpu"] and c["resources"]["limits"]["memory"]
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/var/lib/llmgw", "/tmp"} <= mounts  # writable places on a read-only root
        if doc["kind"] != "Job":
            assert any(m["mountPath"] == "/etc/llmgw" and m.get("readOnly") for m in c["volumeMounts"])


def test_services_pdbs_and_autoscaler_select_their_pods():
    pods = {name: w["spec"]["template"]["metadata"]["labels"] for name, w in WORKLOADS.items()}
    for name, svc in of_kind("Service").items():
        matched = [w for w, labels in pods.items() if selects(svc["spec"]["selector"], labels)]
        assert len(matched) == 1, f"Service {name} selects {matched}"
        names = _port_names(container(WORKLOADS[matched[0]]))
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, f"Service {name}: no container port {port['targetPort']}"
    assert {n for n, s in of_kind("Service").items()} == {"llmgw-edge", "llmgw-ui-api", "llmgw-usage"}
    assert of_kind("StatefulSet")["llmgw-usage"]["spec"]["serviceName"] == "llmgw-usage"
    budgets = of_kind("PodDisruptionBudget")
    covered = set()
    for name, pdb in budgets.items():
        matched = [w for w, labels in pods.items() if selects(pdb["spec"]["selector"]["matchLabels"], labels)]
        assert len(matched) == 1, f"PodDisruptionBudget {name} selects {matched}"
        covered |= set(matched)
        assert WORKLOADS[matched[0]]["spec"]["replicas"] > pdb["spec"].get("minAvailable", 0)
    assert covered == {"llmgw-edge", "llmgw-router", "llmgw-pricing", "llmgw-usage", "llmgw-ui-api"}
    (hpa,) = of_kind("HorizontalPodAutoscaler").values()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "llmgw-edge")
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert container(WORKLOADS["llmgw-edge"])["resources"]["requests"]["cpu"]  # utilization needs a request


def test_network_policy_denies_by_default_and_opens_the_ports_served():
    policies = of_kind("NetworkPolicy")
    gateway = {"app.kubernetes.io/name": "llmgw"}
    deny = [p for p in policies.values() if p["spec"]["podSelector"]["matchLabels"] == gateway
            and not p["spec"].get("ingress")]
    assert deny and "Ingress" in deny[0]["spec"]["policyTypes"]
    opened = {}
    for p in policies.values():
        for rule in p["spec"].get("ingress") or []:
            for port in rule["ports"]:
                opened.setdefault(port["port"], []).append(p["spec"]["podSelector"]["matchLabels"])
    assert set(opened) == {8080, 8081, METRICS_PORT}
    assert opened[8080] == [{**gateway, "app.kubernetes.io/component": "edge"}]
    assert opened[8081] == [{**gateway, "app.kubernetes.io/component": "ui-api"}]


# ---- configuration and secrets ---------------------------------------------------------------------------


def test_secrets_by_reference_only():
    assert not of_kind("Secret"), "the base references the Secret, it never holds one"
    for doc in [*WORKLOADS.values(), *of_kind("Job").values()]:
        for name, e in env(container(doc)).items():
            secret = re.search(r"KEY|TOKEN|PASSWORD", name) or name == "CLICKHOUSE_URL"
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if secret:
                assert ref and ref["name"] == SECRET and "value" not in e, f"{doc['metadata']['name']}: {name}"
            else:
                assert ref is None, f"{doc['metadata']['name']}: {name} from the Secret"


def test_each_container_gets_what_the_same_compose_service_gets():
    """docker-compose.yml is checked against the code (tests/unit/test_deploy.py): no container here gets a
    variable the same service does not get there (the edge no admin token, ui-api no provider key)."""
    for doc in [*WORKLOADS.values(), *of_kind("Job").values()]:
        name = container(doc)["args"][0]
        compose_env = set(COMPOSE[name].get("environment") or {})
        extra = set(env(container(doc))) - compose_env
        assert not extra, f"{name}: {sorted(extra)} (not in docker-compose.yml's {name})"
    edge_url = urlparse(env(container(WORKLOADS["llmgw-ui-api"]))["LLMGW_EDGE_URL"]["value"])
    edge_service = of_kind("Service")["llmgw-edge"]
    assert edge_url.hostname == "llmgw-edge" and edge_url.port in [p["port"] for p in edge_service["spec"]["ports"]]


def test_the_gateway_config_is_valid_and_its_keys_reach_the_edge():
    config_file = K8S / "llmgw.yaml"
    config = load_config(config_file)
    assert config.edge.require_keys  # the edge listens on every address of its pod
    refs = set(re.findall(r"\$\{([A-Z0-9_]+)\}", "\n".join(
        line for line in config_file.read_text().splitlines() if not line.lstrip().startswith("#"))))
    edge = env(container(WORKLOADS["llmgw-edge"]))
    assert refs and {n for n in edge if n.endswith("_API_KEY")} == refs
    mounted = {v["configMap"]["name"] for w in WORKLOADS.values() for v in w["spec"]["template"]["spec"]["volumes"]
               if "configMap" in v}
    assert mounted == {"llmgw-config"}
    generated = {g["name"]: g for g in KUSTOMIZATION["configMapGenerator"]}
    assert generated["llmgw-config"]["files"] == ["llmgw.yaml"]
    endpoints = dict(item.split("=", 1) for item in generated["llmgw-endpoints"]["literals"])
    assert set(endpoints) == {"NATS_URL", "REDIS_URL"}
