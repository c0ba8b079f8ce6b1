"""The deployment files (ops/k8s/, ops/compose.yaml) are valid and agree with the gateway.

Nothing here talks to a cluster or a Docker engine (neither exists on the development machines or
in CI). The kustomizations are rendered in Python (`render`: the subset of kustomize they use:
`resources`, `configMapGenerator` with kustomize's content hash, `namespace`, `images`, `replicas`,
RFC 6902 `patches`; any other key fails) and, where a `kubectl` or `kustomize` binary is on the
PATH, compared with its output. Every resource is validated: built-in kinds with kubernetes-validate
(Kubernetes' own JSON schemas, strict: an unknown field fails), the operators' custom resources with
jsonschema against their CRDs' openAPIV3Schema vendored in ops/k8s/crd-schemas/ (README there),
made strict the way the API server's field validation is. ops/compose.yaml is validated against the
Compose Specification's schema (ops/compose/compose-spec.json), and every file it mounts, service it
depends on, health check and published port is checked. `test_a_broken_manifest_is_caught` proves
the validators fail on a misspelt field, a missing required one and a wrong type.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gateway.runtime.app import create_app
from gateway.settings.load import load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "ops" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
CRD_SCHEMAS = K8S / "crd-schemas"
COMPOSE = ROOT / "ops" / "compose.yaml"
COMPOSE_DIR = ROOT / "ops" / "compose"
# The oldest Kubernetes the manifests are meant for, and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
CUSTOM = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): "rabbitmq.com_v1beta1_rabbitmqcluster.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_prometheusrule.json",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

Resource = dict[str, Any]


# -- rendering a kustomization (the subset these files use) --------------------------------------------


def _kustomize_hash(cm: Resource) -> str:
    """kustomize's name suffix for a generated ConfigMap: sha256 of {data, kind, name} as Go's json.Marshal writes
    it, 10 hex chars with 0 1 3 a e re-lettered (api/hasher). kustomize 5 hashes before it sets the name: "".
    """
    encoded = json.dumps(
        {"data": cm["data"], "kind": "ConfigMap", "name": ""}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):  # Go's json.Marshal
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _pod_specs(resource: Resource) -> list[dict[str, Any]]:
    template = resource.get("spec", {}).get("template", {})
    return [template["spec"]] if resource["kind"] in {"Deployment", "StatefulSet", "DaemonSet"} else []


def _json_patch(doc: Any, ops: list[dict[str, Any]]) -> None:
    """RFC 6902 add / replace / remove (what the overlays use)."""
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) and last != "-" else last
        if op["op"] == "remove":
            del node[key]
        elif op["op"] == "replace":
            assert (key in node) if isinstance(node, dict) else key < len(node), f"replace: no {op['path']}"
            node[key] = op["value"]
        elif op["op"] == "add":
            if isinstance(node, list):
                node.insert(len(node) if key == "-" else key, op["value"])
            else:
                node[key] = op["value"]
        else:
            raise AssertionError(f"unsupported JSON patch op {op['op']!r}")


def render(directory: Path) -> list[Resource]:
    """The resources `kustomize build directory` gives, for the kustomization features listed above."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    known = {"apiVersion", "kind", "resources", "configMapGenerator", "namespace", "images", "replicas", "patches"}
    assert set(k) <= known, f"{directory}: kustomization keys this test cannot render: {set(k) - known}"
    assert k["kind"] == "Kustomization"
    resources: list[Resource] = []
    for entry in k.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources += render(path)
        else:
            resources += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    renamed: dict[str, str] = {}
    for gen in k.get("configMapGenerator", []):
        assert set(gen) <= {"name", "files"}, gen
        data = {Path(f).name: (directory / f).read_text(encoding="utf-8") for f in gen["files"]}
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
        renamed[gen["name"]] = cm["metadata"]["name"] = f"{gen['name']}-{_kustomize_hash(cm)}"
        resources.append(cm)
    for res in resources:  # generated names replace the references to them
        for spec in _pod_specs(res):
            for vol in spec.get("volumes", []):
                if "configMap" in vol:
                    vol["configMap"]["name"] = renamed.get(vol["configMap"]["name"], vol["configMap"]["name"])
    if "namespace" in k:
        for res in resources:
            if res["kind"] not in CLUSTER_SCOPED:
                res["metadata"]["namespace"] = k["namespace"]
    for image in k.get("images", []):
        for res in resources:
            for spec in _pod_specs(res):
                for c in spec.get("containers", []) + spec.get("initContainers", []):
                    name, _, tag = c["image"].partition(":")
                    if name == image["name"]:
                        c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    for rep in k.get("replicas", []):
        hits = [
            r for r in resources if r["kind"] in {"Deployment", "StatefulSet"} and r["metadata"]["name"] == rep["name"]
        ]
        assert hits, f"replicas: no workload named {rep['name']}"
        for res in hits:
            res["spec"]["replicas"] = rep["count"]
    for patch in k.get("patches", []):
        ops = yaml.safe_load(
            (directory / patch["path"]).read_text(encoding="utf-8") if "path" in patch else patch["patch"]
        )
        assert isinstance(ops, list), f"{patch}: only RFC 6902 patches (a list of operations) are rendered here"
        target = patch["target"]
        assert set(target) <= {"kind", "name"}, target
        hits = [
            r
            for r in resources
            if r["kind"] == target.get("kind", r["kind"])
            and r["metadata"]["name"] == target.get("name", r["metadata"]["name"])
        ]
        assert hits, f"patch target matches nothing: {target}"
        for res in hits:
            _json_patch(res, ops)
    return resources


# -- validating resources ---------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """A CRD schema as the API server applies it with strict field validation: unknown fields fail."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads((CRD_SCHEMAS / CUSTOM[(api_version, kind)]).read_text(encoding="utf-8"))
    schema["properties"]["metadata"] = {"type": "object"}  # checked apart: ObjectMeta is the API server's
    return jsonschema.Draft7Validator(_strict(schema))


def problems(res: Resource) -> list[str]:
    """Why the API server would refuse `res`; [] if it is valid."""
    where = f"{res.get('kind')} {res.get('metadata', {}).get('name')}"
    name = res.get("metadata", {}).get("name", "")
    if not _DNS1123.match(name) or len(name) > 253:
        return [f"{where}: metadata.name {name!r} is not a DNS-1123 name"]
    key = (res.get("apiVersion"), res.get("kind"))
    if key in CUSTOM:
        return [
            f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in _crd_validator(*key).iter_errors(res)
        ]
    found = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(res, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            found.append(f"{where} (Kubernetes {version}): {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            found.append(f"{where}: no schema for {key} in Kubernetes {version} nor a vendored CRD")
    return found


def _one(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    hits = [r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(hits) == 1, f"{kind} {name}: {len(hits)} found"
    return hits[0]


@pytest.fixture(scope="module")
def base() -> list[Resource]:
    return render(BASE)


@pytest.fixture(scope="module")
def overlay() -> list[Resource]:
    return render(OVERLAY)


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_the_kustomization_renders_and_every_resource_is_valid(directory: Path) -> None:
    resources = render(directory)
    kinds = {r["kind"] for r in resources}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "RabbitmqCluster",
    } <= kinds
    ids = [(r["kind"], r["metadata"]["name"]) for r in resources]
    assert len(ids) == len(set(ids)), "two resources with one kind and name"
    assert [p for r in resources for p in problems(r)] == []


def test_every_yaml_file_under_ops_k8s_is_valid_on_its_own() -> None:
    """Including the files no kustomization lists (secrets.example.yaml) and the patches' targets."""
    checked = 0
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.name.endswith(".patch.yaml"):
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert problems(doc) == [], path
            checked += 1
    assert checked >= 12


@pytest.mark.skipif(not (shutil.which("kustomize") or shutil.which("kubectl")), reason="no kustomize or kubectl binary")
@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_the_python_render_is_what_kustomize_renders(directory: Path) -> None:
    cmd = ["kustomize", "build"] if shutil.which("kustomize") else ["kubectl", "kustomize"]
    out = subprocess.run([*cmd, str(directory)], capture_output=True, text=True, timeout=60, check=True).stdout
    theirs = sorted((d for d in yaml.safe_load_all(out) if d), key=lambda r: (r["kind"], r["metadata"]["name"]))
    ours = sorted(render(directory), key=lambda r: (r["kind"], r["metadata"]["name"]))
    assert ours == theirs


# -- the validators catch broken manifests -------------------------------------------------------------


def _container(rs: list[Resource]) -> dict[str, Any]:
    return _one(rs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


BREAKAGES = {
    "Deployment: misspelt field": lambda rs: _container(rs).update(imagePullPolcy="Always"),
    "Deployment: container without its name": lambda rs: _container(rs).pop("name"),
    "Deployment: replicas a string": lambda rs: _one(rs, "Deployment")["spec"].update(replicas="two"),
    "Service: port without its number": lambda rs: _one(rs, "Service", "swgw")["spec"]["ports"][0].pop("port"),
    "PodDisruptionBudget: misspelt field": lambda rs: _one(rs, "PodDisruptionBudget")["spec"].update(minAvailabel=1),
    "RabbitmqCluster: misspelt field": lambda rs: _one(rs, "RabbitmqCluster")["spec"].update(replica=3),
    "RabbitmqCluster: replicas a string": lambda rs: _one(rs, "RabbitmqCluster")["spec"].update(replicas="3"),
    "ServiceMonitor: endpoint misspelt": lambda rs: _one(rs, "ServiceMonitor", "swgw")["spec"]["endpoints"][0].update(
        intervall="15s"
    ),
    "ServiceMonitor: no selector": lambda rs: _one(rs, "ServiceMonitor", "swgw")["spec"].pop("selector"),
    "PrometheusRule: rule without expr": lambda rs: _one(rs, "PrometheusRule")["spec"]["groups"][0]["rules"][0].pop(
        "expr"
    ),
    "a name that is not DNS-1123": lambda rs: _one(rs, "PodDisruptionBudget")["metadata"].update(name="Swgw_PDB"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_manifest_is_caught(base: list[Resource], breakage: str) -> None:
    resources = copy.deepcopy(base)
    BREAKAGES[breakage](resources)
    assert [p for r in resources for p in problems(r)], f"not caught: {breakage}"


def test_a_kustomization_key_the_renderer_does_not_know_fails(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("kind: Kustomization\ncommonLabels: {a: b}\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="commonLabels"):
        render(tmp_path)


# -- the manifests agree with the gateway and with each other -------------------------------------------


def _secret_keys() -> dict[str, set[str]]:
    """Secret name -> keys, from secrets.example.yaml, plus the one the RabbitMQ operator makes."""
    docs = yaml.safe_load_all((OVERLAY / "secrets.example.yaml").read_text(encoding="utf-8"))
    keys = {d["metadata"]["name"]: set(d["stringData"]) for d in docs}
    keys["swgw-rabbitmq-default-user"] = {"username", "password", "host", "port"}
    return keys


def _env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the gateway would see it: placeholders for secret values."""
    env: dict[str, str] = {}
    keys = _secret_keys()
    for source in (e["secretRef"]["name"] for e in container.get("envFrom", [])):
        env.update({k: hashlib.sha256(k.encode()).hexdigest() for k in keys[source]})  # a distinct hash each
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["key"] in keys[ref["name"]], f"{var['name']}: Secret {ref['name']} has no key {ref['key']}"
            env[var["name"]] = "a" * 64 if "SHA256" in var["name"] else "placeholder"
    return env


def _local_config(text: str, tmp_path: Path) -> Path:
    """The image's /app/schemas is this checkout's schemas/."""
    path = tmp_path / "gateway.toml"
    path.write_text(text.replace('"/app/schemas/', f'"{ROOT}/schemas/'), encoding="utf-8")
    return path


def _hosts(urls: Any) -> list[str]:
    return [urlsplit(str(u)).netloc.rpartition("@")[2] for u in urls]


def test_the_configmap_is_a_valid_multi_replica_config_with_its_secrets_from_the_deployment(
    base: list[Resource], tmp_path: Path
) -> None:
    deployment = _one(base, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    text = _one(base, "ConfigMap")["data"]["gateway.toml"]
    doc = tomllib.loads(text)
    settings = load_settings(_local_config(text, tmp_path), env=_env(container))
    # The broker: the three RabbitmqCluster nodes, in the file and in SWGW_BROKER_URL, which replaces it.
    nodes = [f"swgw-rabbitmq-server-{i}.swgw-rabbitmq-nodes:5672" for i in range(3)]
    assert _hosts(doc["broker"]["url"]) == nodes
    assert _hosts(u.reveal() for u in settings.broker.urls) == nodes
    assert _one(base, "RabbitmqCluster")["spec"]["replicas"] == len(nodes)
    assert settings.dedup.backend == "postgres"
    assert settings.admin.token_hashes, "admin API closed: SWGW_ADMIN_TOKEN_SHA256 missing"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (settings.server.port, settings.admin.port) == (ports["partner"], ports["admin"])
    assert settings.server.host == settings.admin.host == "0.0.0.0"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert container["args"] == ["serve", "--config", f"{mount['mountPath']}/gateway.toml"]


def test_the_sigterm_drain_fits_in_the_grace_period(base: list[Resource]) -> None:
    """preStop, then serve.py's drain: request_timeout_s for requests, create_app's delivery stop bound."""
    spec = _one(base, "Deployment")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    request_timeout_s = tomllib.loads(_one(base, "ConfigMap")["data"]["gateway.toml"])["server"]["request_timeout_s"]
    delivery_stop_s = inspect.signature(create_app).parameters["delivery_stop_timeout_s"].default
    closing_s = 10  # broker connections, journal flush, the dedup store's bounded calls
    assert spec["terminationGracePeriodSeconds"] >= float(command[1]) + request_timeout_s + delivery_stop_s + closing_s


def test_the_pods_are_probed_non_root_and_read_only(base: list[Resource]) -> None:
    deployment = _one(base, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert (container["readinessProbe"]["httpGet"]["path"], container["readinessProbe"]["httpGet"]["port"]) == (
        "/readyz",
        "partner",
    )
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    assert "--uid 10001" in (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]


def test_services_pdb_and_service_monitor_select_what_they_mean(overlay: list[Resource]) -> None:
    deployment = _one(overlay, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    services = {s["metadata"]["name"]: s for s in overlay if s["kind"] == "Service"}
    assert set(services) == {"swgw", "swgw-admin"}
    for svc in services.values():
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    pdb = _one(overlay, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    monitor = _one(overlay, "ServiceMonitor", "swgw")
    selected = [
        s
        for s in services.values()
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["swgw-admin"]
    assert monitor["spec"]["endpoints"][0]["port"] == "admin"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    # The rules' up{job="swgw"}: the job is the value of the Service label jobLabel names.
    assert selected[0]["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "swgw"
    assert 'job="swgw"' in (ROOT / "ops" / "alerts" / "swgw.rules.yml").read_text(encoding="utf-8")


def test_the_prometheus_rule_is_the_alert_rules_file(base: list[Resource]) -> None:
    rules = yaml.safe_load((ROOT / "ops" / "alerts" / "swgw.rules.yml").read_text(encoding="utf-8"))
    assert _one(base, "PrometheusRule")["spec"]["groups"] == rules["groups"], (
        "run .venv/bin/python ops/k8s/prometheusrule.py"
    )


def _conf(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_the_rabbitmq_cluster_mirrors_rabbitmq_conf_and_the_compose_cluster(base: list[Resource]) -> None:
    cluster = _one(base, "RabbitmqCluster")["spec"]
    assert cluster["replicas"] == 3
    k8s = _conf(cluster["rabbitmq"]["additionalConfig"])
    plain = _conf((ROOT / "ops" / "rabbitmq" / "rabbitmq.conf").read_text(encoding="utf-8"))
    compose = _conf((COMPOSE_DIR / "rabbitmq-cluster.conf").read_text(encoding="utf-8"))
    assert plain.items() <= k8s.items(), "every setting of ops/rabbitmq/rabbitmq.conf, with its value"
    quorum = {k: v for k, v in compose.items() if k.startswith("quorum_queue.")}
    assert quorum, "no quorum queue settings in ops/compose/rabbitmq-cluster.conf"
    assert quorum.items() <= k8s.items(), "the compose nodes' quorum queue settings"
    assert set(k8s) <= set(plain) | set(quorum), (
        f"settings only the k8s cluster has: {set(k8s) - set(plain) - set(quorum)}"
    )
    assert {"consumer_timeout", "disk_free_limit.absolute", "vm_memory_high_watermark.relative"} <= set(k8s)


# -- ops/compose.yaml ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # anchors and merge keys resolved
    return doc


def test_compose_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads((COMPOSE_DIR / "compose-spec.json").read_text(encoding="utf-8"))
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(compose)
    ]
    assert errors == []
    broken = copy.deepcopy(compose)
    broken["services"]["swgw-1"]["helthcheck"] = broken["services"]["swgw-1"].pop("healthcheck")
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken)), "a misspelt key must fail"


def test_compose_mounts_builds_and_dependencies_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"rabbit-1", "rabbit-2", "rabbit-3", "swgw-1", "swgw-2", "postgres", "prometheus", "grafana"} <= set(
        services
    )
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: mounts {source}, which is not in the repository"
            else:
                assert source in compose.get("volumes", {}), f"{name}: named volume {source} not declared"
        if "build" in svc:
            context = COMPOSE.parent / svc["build"]["context"]
            assert (context / svc["build"]["dockerfile"]).is_file(), name
        assert set(svc.get("depends_on", {})) <= set(services), f"{name} depends on a service that does not exist"
        assert name not in svc.get("depends_on", {}), name
        assert svc.get("healthcheck", {}).get("test"), f"{name}: no health check"


def test_compose_published_ports_do_not_collide_and_stay_on_loopback(compose: dict[str, Any]) -> None:
    published = [port for svc in compose["services"].values() for port in svc.get("ports", [])]
    host_ports = [tuple(p.split(":")[:2]) for p in published]
    assert all(host == "127.0.0.1" for host, _ in host_ports), published
    assert len(host_ports) == len(set(host_ports)), f"a host port is published twice: {published}"


def test_compose_runs_the_topology_the_k8s_files_run(compose: dict[str, Any], tmp_path: Path) -> None:
    """Two replicas on one config with the PostgreSQL store and the three nodes; Prometheus scrapes both
    replicas' admin listeners and loads ops/alerts; the rabbit nodes are the ones peer discovery lists."""
    services = compose["services"]
    gateways = sorted(n for n, s in services.items() if s.get("command", [None])[0] == "serve")
    assert gateways == ["swgw-1", "swgw-2"]
    cluster = _conf((COMPOSE_DIR / "rabbitmq-cluster.conf").read_text(encoding="utf-8"))
    nodes = sorted(
        v.partition("@")[2] for k, v in cluster.items() if k.startswith("cluster_formation.classic_config.nodes.")
    )
    assert nodes == sorted(n for n in services if n.startswith("rabbit-"))
    assert all(services[n]["hostname"] == n for n in nodes)
    cookies = {services[n]["environment"]["RABBITMQ_ERLANG_COOKIE"] for n in nodes}
    assert len(cookies) == 1
    for name in gateways:
        env = {k: re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", v) for k, v in services[name]["environment"].items()}
        text = (COMPOSE_DIR / "gateway.toml").read_text(encoding="utf-8")
        settings = load_settings(_local_config(text, tmp_path), env=env)
        assert sorted(h.partition(":")[0] for h in _hosts(u.reveal() for u in settings.broker.urls)) == nodes
        assert settings.dedup.backend == "postgres"
        assert "@postgres:5432/" in env["SWGW_DEDUP_DSN"]
        assert set(services[name]["depends_on"]) >= {*nodes, "postgres"}
        assert services[name]["read_only"] is True
        grace_s = int(services[name]["stop_grace_period"].removesuffix("s"))
        delivery_stop_s = inspect.signature(create_app).parameters["delivery_stop_timeout_s"].default
        assert grace_s >= settings.server.request_timeout_s + delivery_stop_s + 10, "the SIGTERM drain must fit"
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}
    assert jobs["swgw"]["static_configs"][0]["targets"] == [f"{n}:{settings.admin.port}" for n in gateways]
    assert jobs["rabbitmq"]["static_configs"][0]["targets"] == [f"{n}:15692" for n in nodes]
    assert prometheus["rule_files"] == ["alerts/swgw.rules.yml"]
    assert "./alerts:/etc/prometheus/alerts:ro" in services["prometheus"]["volumes"]
    dashboards = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/dashboards/swgw.yaml").read_text(encoding="utf-8"))
    path = dashboards["providers"][0]["options"]["path"]
    assert f"./grafana:{path}:ro" in services["grafana"]["volumes"]
    datasources = yaml.safe_load(
        (COMPOSE_DIR / "grafana/provisioning/datasources/prometheus.yaml").read_text(encoding="utf-8")
    )
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"


def _compose_cli() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) and subprocess.run([*cmd, "version"], capture_output=True, timeout=30).returncode == 0:
            return cmd
    return None


@pytest.mark.skipif(_compose_cli() is None, reason="no docker compose CLI on this machine")
def test_docker_compose_config_accepts_the_file() -> None:
    cli = _compose_cli()
    assert cli is not None
    result = subprocess.run([*cli, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
