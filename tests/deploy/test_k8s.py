"""The Kubernetes manifests: every overlay renders with `kubectl kustomize`, every object validates
offline against the Kubernetes JSON schemas (strict: unknown fields fail), and the manifests agree
with the application: ports, probe paths (real routes of the app), SERVICE_* names (real Settings
fields, values Settings accepts), commands (real `service` subcommands whose arguments parse),
the metrics the autoscaler reads (exported by the app, produced by the adapter rules), the pod's
grace period (long enough for the app's own drain), and the hardening the issue asks for."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import pytest
import yaml
from deploy_helpers import K8S, OVERLAYS, ROOT, dockerfile_instructions, one, pod_labels, pod_spec

from service.serving.settings import Settings

# Kubernetes versions to validate against: the minimum this deployment targets (the native preStop
# `sleep` action needs 1.30; backoffLimitPerIndex is GA in 1.33) and the newest schema bundled.
TARGET_K8S = "1.33"


def k8s_versions() -> list[str]:
    kv = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is in the `dev` extra")
    return sorted({TARGET_K8S, ".".join(kv.latest_version().split(".")[:2])})


def containers(obj: dict) -> list[dict]:
    spec = pod_spec(obj)
    return [] if spec is None else spec.get("initContainers", []) + spec["containers"]


def workloads(objs: list[dict]) -> list[dict]:
    return [o for o in objs if pod_spec(o) is not None]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    from service.cli import parser

    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of command/args (an unknown variable stays as written)."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in args]


def container_env(objs: list[dict], c: dict, completion_index: str = "0") -> dict[str, str]:
    """The variables a container sees: its ConfigMaps (envFrom), then its own env entries."""
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(one(objs, "ConfigMap", src["configMapRef"]["name"])["data"])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "job-completion-index" in str(e.get("valueFrom", {})):
            env[e["name"]] = completion_index
    return env


# ---------------------------------------------------------------- render + schema


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_the_kubernetes_schemas(rendered, overlay: str) -> None:
    from kubernetes_validate import utils as kv

    objs = rendered[overlay]
    assert objs
    for version in k8s_versions():
        for obj in objs:
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                pytest.fail(f"{overlay}: {name} is not valid Kubernetes {version}: {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                pytest.fail(f"{overlay}: {name}: {e.message}")


def test_schema_validation_really_rejects_mistakes(rendered) -> None:
    """Negative control: a misspelt field and a wrongly typed value both fail strict validation."""
    import copy

    from kubernetes_validate import utils as kv

    deploy = one(rendered["gpu"], "Deployment", "mvretrieval")
    typo = copy.deepcopy(deploy)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"httpGet": {"path": "/readyz", "port": 80}}
    wrong_type = copy.deepcopy(deploy)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45s"
    for bad in (typo, wrong_type):
        with pytest.raises(kv.ValidationError):
            kv.validate(bad, TARGET_K8S, strict=True)


def test_every_manifest_file_is_rendered() -> None:
    """A YAML file under k8s/ that no kustomization lists would silently never be applied."""
    listed = set()
    for kfile in K8S.rglob("kustomization.yaml"):
        k = yaml.safe_load(kfile.read_text())
        listed |= {(kfile.parent / r).resolve() for r in k.get("resources", [])}
        listed.add(kfile.resolve())
    helm_values = {(K8S / "monitoring" / "prometheus-adapter-values.yaml").resolve()}
    for f in K8S.rglob("*.yaml"):
        assert f.resolve() in listed | helm_values, f"{f.relative_to(ROOT)} is in no kustomization"


# ---------------------------------------------------------------- the serving stack vs the app


def route_paths(routes: list, prefix: str = "") -> set[str]:
    """Paths of an app's routes, through included routers (FastAPI >= 0.16x keeps them lazily as
    `_IncludedRouter(original_router, include_context)`) and mounts."""
    paths = set()
    for r in routes:
        if hasattr(r, "original_router"):
            paths |= route_paths(r.original_router.routes, prefix + r.include_context.prefix)
        elif hasattr(r, "path"):
            paths.add(prefix + r.path)
    return paths


@pytest.fixture(scope="module")
def app_routes() -> set[str]:
    """Routes of the real app; each also answers something other than 404 (no lifespan: not loaded)."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    app = create_app(Settings(artifacts=Path("/nonexistent"), reload_poll_s=0))
    paths = route_paths(app.routes)
    client = TestClient(app)
    for path in ("/healthz", "/readyz", "/metrics"):
        if path in paths:
            assert client.get(path).status_code != 404, path
    return paths


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_ports_probes_and_settings_match_the_app(rendered, overlay: str, app_routes: set[str], monkeypatch) -> None:
    objs = rendered[overlay]
    deploy = one(objs, "Deployment", "mvretrieval")
    (server,) = pod_spec(deploy)["containers"]
    settings_cm = one(objs, "ConfigMap", "mvretrieval-settings")["data"]

    # Port: the container port is the port the app listens on.
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    app_port = int(settings_cm.get("SERVICE_PORT", Settings.model_fields["port"].default))
    assert ports["http"] == app_port
    svc = one(objs, "Service", "mvretrieval")
    assert all(p["targetPort"] in ports or p["targetPort"] == app_port for p in svc["spec"]["ports"])
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == app_port and annotations["prometheus.io/path"] in app_routes

    # Probes: real routes; liveness never on readiness (a loading or overloaded pod must not be killed).
    probes = {k: server[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    for kind, probe in probes.items():
        assert probe["path"] in app_routes, f"{kind} probes {probe['path']}, not a route of the app"
        assert probe["port"] in ports or probe["port"] == app_port
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/healthz"

    # Settings: every SERVICE_* name is a field; the values are ones Settings accepts.
    fields = set(Settings.model_fields)
    env = dict(settings_cm)
    for e in server.get("env", []):
        env[e["name"]] = e.get("value", "1")  # secret / resource-field values: a placeholder of the right type
    for key in env:
        assert key.startswith("SERVICE_"), key
        assert key.removeprefix("SERVICE_").lower() in fields, f"{key} is not a field of service/serving/settings.py"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.host == "0.0.0.0" and s.port == app_port and s.reload_poll_s > 0, "replicas must follow a publish"
    assert str(s.artifacts) == next(m["mountPath"] for m in server["volumeMounts"] if m["name"] == "artifacts")

    # The container runs `service serve` (the image's entry point) with arguments the CLI accepts.
    assert "command" not in server
    assert server["args"][0] in subcommands()
    subcommands()[server["args"][0]].parse_args(server["args"][1:])


def test_image_entrypoint_is_what_the_pods_rely_on() -> None:
    for name in ("Dockerfile", "Dockerfile.cuda"):
        entry = [a for i, a in dockerfile_instructions(ROOT / name) if i == "ENTRYPOINT"]
        assert entry == ['["service"]'], name


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_graceful_termination_outlasts_the_apps_drain(rendered, overlay: str) -> None:
    from service.serving.batcher import MicroBatcher

    spec = pod_spec(one(rendered[overlay], "Deployment", "mvretrieval"))
    (server,) = spec["containers"]
    pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    # uvicorn's graceful timeout, wherever the serve command sets it, and the batcher's drain.
    uvicorn_s = max(int(n) for f in (ROOT / "service").rglob("*.py")
                    for n in re.findall(r"timeout_graceful_shutdown=(\d+)", f.read_text()))
    drain_s = inspect.signature(MicroBatcher.drain).parameters["timeout_s"].default
    assert pre_stop >= 5, "endpoints need a few seconds to drop a terminating pod everywhere"
    assert spec["terminationGracePeriodSeconds"] > pre_stop + uvicorn_s + drain_s


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_artifacts_reach_every_replica_read_only(rendered, overlay: str) -> None:
    objs = rendered[overlay]
    spec = pod_spec(one(objs, "Deployment", "mvretrieval"))
    vol = next(v for v in spec["volumes"] if v["name"] == "artifacts")
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "artifacts")
    assert mount["readOnly"] and vol["persistentVolumeClaim"]["readOnly"]
    pvc = one(objs, "PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # ... and the pipeline writes the same claim.
    for job in workloads(rendered[f"{overlay}/pipeline"]):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod_spec(job)["volumes"]
                  if "persistentVolumeClaim" in v}
        assert claims["artifacts"] == pvc["metadata"]["name"]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_autoscaler_budget_and_service_select_the_serving_pods(rendered, overlay: str) -> None:
    objs = rendered[overlay]
    deploy = one(objs, "Deployment", "mvretrieval")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deploy["spec"], "the HPA owns the replica count"
    hpa = one(objs, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deploy["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1 and hpa["spec"]["minReplicas"] > 1
    for selector in (pdb["spec"]["selector"]["matchLabels"], one(objs, "Service")["spec"]["selector"],
                     deploy["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    # No pipeline pod is ever behind the Service or counted by the budget.
    for job in workloads(rendered[f"{overlay}/pipeline"]):
        assert not one(objs, "Service")["spec"]["selector"].items() <= pod_labels(job).items()


def test_autoscaler_metrics_are_exported_by_the_app_and_served_by_the_adapter(rendered) -> None:
    from service.serving.metrics import Metrics

    exported = set(re.findall(r"^# TYPE (\S+) ", Metrics().render().decode(), re.M))
    exported |= {n + "_total" for n in exported}
    values = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    rules = values["rules"]["custom"]
    served = {r["name"]["as"] for r in rules}
    for rule in rules:
        series = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"]).group(1)
        assert series in exported, f"the adapter queries {series}, which the service does not export"
        assert re.search(rule["name"]["matches"], series)
    for overlay in ("cpu", "gpu"):
        hpa = one(rendered[overlay], "HorizontalPodAutoscaler")
        pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        assert "search_queue_depth" in pods_metrics, "GPU pods scale on their queue, not on CPU"
        assert set(pods_metrics) <= served, f"{overlay}: the HPA reads {pods_metrics}, the adapter serves {served}"
    cpu_kinds = {m["type"] for m in one(rendered["cpu"], "HorizontalPodAutoscaler")["spec"]["metrics"]}
    gpu_kinds = {m["type"] for m in one(rendered["gpu"], "HorizontalPodAutoscaler")["spec"]["metrics"]}
    assert "Resource" in cpu_kinds and gpu_kinds == {"Pods"}


def test_admin_token_comes_from_a_secret_and_is_never_in_the_manifests(rendered) -> None:
    for overlay, objs in rendered.items():
        assert not [o for o in objs if o["kind"] == "Secret"], "a committed Secret would hold a known token"
        for w in workloads(objs):
            for c in containers(w):
                for e in c.get("env", []):
                    if e["name"] == "SERVICE_ADMIN_TOKEN":
                        ref = e["valueFrom"]["secretKeyRef"]
                        assert ref["optional"] is True and ref["key"] == "SERVICE_ADMIN_TOKEN"
        for cm in (o for o in objs if o["kind"] == "ConfigMap"):
            assert not any("TOKEN" in k for k in cm["data"]), overlay


# ---------------------------------------------------------------- hardware


def test_gpu_overlay_asks_for_gpus_and_gpu_nodes_cpu_overlay_never(rendered) -> None:
    for overlay in ("gpu", "gpu/pipeline"):
        for w in workloads(rendered[overlay]):
            spec, c = pod_spec(w), pod_spec(w)["containers"][0]
            needs_gpu = w["metadata"]["name"] not in ("mvretrieval-publish", "mvretrieval-versions")
            if not needs_gpu:
                continue
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1, w["metadata"]["name"]
            assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
            assert c["image"].endswith("-cuda12")
    for overlay in ("cpu", "cpu/pipeline"):
        for w in workloads(rendered[overlay]):
            c = pod_spec(w)["containers"][0]
            assert "nvidia.com/gpu" not in str(c["resources"]) and c["image"].endswith("-cpu")
    gpu_cm = one(rendered["gpu"], "ConfigMap", "mvretrieval-settings")["data"]
    assert gpu_cm["SERVICE_ENCODER_DEVICE"] == "cuda"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened_and_bounded(rendered, overlay: str) -> None:
    uid = next(a for i, a in reversed(dockerfile_instructions(ROOT / "Dockerfile")) if i == "USER").split(":")[0]
    for w in workloads(rendered[overlay]):
        name, spec = w["metadata"]["name"], pod_spec(w)
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] and sc["runAsUser"] == int(uid), name
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
        tmp = {m["mountPath"]: m["name"] for c in containers(w) for m in c.get("volumeMounts", [])}
        assert "/tmp" in tmp and "emptyDir" in next(v for v in spec["volumes"] if v["name"] == tmp["/tmp"])
        for c in containers(w):
            csc = c["securityContext"]
            assert csc["readOnlyRootFilesystem"] and csc["allowPrivilegeEscalation"] is False, name
            assert csc["capabilities"]["drop"] == ["ALL"] and not csc.get("privileged")
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{name}: {bound}"


# ---------------------------------------------------------------- the pipeline Jobs vs the CLI


def launched_args(command: list[str], args: list[str]) -> list[str]:
    """torchrun's own parser (the installed torch) reads command + args, as the pod would: it must
    run `-m service.cli` and hand the script its arguments (an option torchrun mistakes for one of
    its own, like `--run` for `--run-path` without a `--` first, fails here); -> the script's argv
    as `service.cli.main` reads it."""
    from torch.distributed.run import get_args_parser

    assert command[0] == "torchrun"
    launch = get_args_parser().parse_args([*command[1:], *args])
    assert launch.module and launch.training_script == "service.cli", launch
    assert "sys.exit(main())" in (ROOT / "service" / "cli" / "__main__.py").read_text()  # `-m service.cli` runs main
    script = list(launch.training_script_args)
    return script[1:] if script[:1] == ["--"] else script  # service.cli drops a leading `--`


def test_docs_show_the_training_launcher_the_gpu_job_runs(rendered) -> None:
    """DEPLOY.md and OPERATIONS.md write torchrun's argv as the GPU train Job runs it (`--` included)."""
    c = pod_spec(one(rendered["gpu/pipeline"], "Job", "mvretrieval-train"))["containers"][0]
    launcher = " ".join(c["command"]) + " " + c["args"][0]
    assert launcher == "torchrun --standalone --nproc-per-node gpu -m service.cli -- train"
    for doc in ("DEPLOY.md", "OPERATIONS.md"):
        assert launcher in (ROOT / "docs" / doc).read_text(), doc


@pytest.mark.parametrize("overlay", ["cpu/pipeline", "gpu/pipeline"])
def test_pipeline_commands_parse_with_the_real_cli(rendered, overlay: str) -> None:
    objs = rendered[overlay]
    commands = subcommands()
    seen = set()
    for w in workloads(objs):
        c = pod_spec(w)["containers"][0]
        env = container_env(objs, c)
        args = expand(c["args"], {**env, "PIPELINE_VERSION": env.get("PIPELINE_VERSION") or "v1"})
        assert not [a for a in args if "$(" in a], f"{w['metadata']['name']}: undefined variable in {args}"
        if "command" in c:  # the GPU training launcher: torchrun ... -m service.cli -- train ...
            args = launched_args(c["command"], args)
        sub = args[0]
        assert sub in commands, f"{w['metadata']['name']} runs `service {sub}`, which the service command lacks"
        ns = commands[sub].parse_args(args[1:])
        seen.add(sub)
        # Paths the command reads or writes are mounted.
        mounts = [m["mountPath"] for m in c["volumeMounts"]]
        for attr in ("artifacts", "catalog", "interactions", "judgments"):
            value = getattr(ns, attr, None)
            if value is not None:
                assert any(str(value).startswith(m) for m in mounts), (w["metadata"]["name"], attr, value)
    assert {"build-index", "train", "embed", "index", "publish", "versions"} <= seen


@pytest.mark.parametrize("overlay", ["cpu/pipeline", "gpu/pipeline"])
def test_embedding_is_an_indexed_job_with_one_shard_per_index(rendered, overlay: str) -> None:
    objs = rendered[overlay]
    job = one(objs, "Job", "mvretrieval-embed")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] <= spec["completions"]
    c = pod_spec(job)["containers"][0]
    shards = set()
    for i in range(spec["completions"]):
        args = expand(c["args"], container_env(objs, c, completion_index=str(i)))
        shards.add(args[args.index("--shard") + 1])
    n = spec["completions"]
    assert shards == {f"{i}/{n}" for i in range(n)}, "SHARD_COUNT must equal spec.completions"
    from service.build.stages import parse_shard

    assert sorted(parse_shard(s) for s in shards) == [(i, n) for i in range(n)]


def test_pipeline_steps_are_selectable_one_at_a_time(rendered) -> None:
    """docs/DEPLOY.md applies one step with `-l app.kubernetes.io/component=<step>`."""
    docs = (ROOT / "docs" / "DEPLOY.md").read_text()
    for overlay in ("cpu/pipeline", "gpu/pipeline"):
        objs = rendered[overlay]
        steps = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objs}
        for w in workloads(objs):
            assert pod_labels(w)["app.kubernetes.io/component"] == w["metadata"]["labels"]["app.kubernetes.io/component"]
        named = set(re.findall(r"app\.kubernetes\.io/component=([a-z-]+)", docs))
        assert named and named <= steps | {"server"}, f"docs/DEPLOY.md names steps {named - steps}"
    for path in re.findall(r"-k (k8s/[\w/.-]+)", docs):
        assert (ROOT / path / "kustomization.yaml").exists(), f"docs/DEPLOY.md applies {path}, which is no kustomization"
