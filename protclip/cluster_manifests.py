"""Offline validation of the cluster configs in ``cluster/`` before anyone runs ``ray up`` or ``kubectl apply``.

Why: a typo in a launcher config or a KubeRay manifest only shows up minutes into provisioning (or as a pod
stuck Pending). Ray cluster launcher configs are checked against Ray's own JSON schema after Ray fills in its
provider defaults (``ray.autoscaler._private.util.prepare_config`` + ``validate_config``, no cloud calls).
KubeRay manifests are checked against the fields the ``ray.io/v1`` CRDs require plus the mistakes that cost
the most: ``rayStartParams`` values that are not strings (the CRD rejects them), GPUs requested without a
``nvidia.com/gpu`` limit, mounts of undeclared volumes, credentials written inline instead of ``secretKeyRef``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "validate_launcher_config",
    "validate_kuberay",
    "validate_ray_cluster_spec",
    "validate_file",
    "load_yaml_documents",
    "GPU_RESOURCE",
]

GPU_RESOURCE = "nvidia.com/gpu"
KUBERAY_API = "ray.io/v1"
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$")
# env names whose value must come from a Secret, never a literal in a manifest
_SECRET_ENV = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", re.IGNORECASE)
_SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


def load_yaml_documents(path: str | Path) -> list[Any]:
    """All documents of a YAML file (``safe_load_all``), empty ones dropped."""
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --------------------------------------------------------------------------------------------------------------
# Ray cluster launcher (ray up)
# --------------------------------------------------------------------------------------------------------------

def validate_launcher_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``ray up`` config with Ray's schema and checks; return the config with Ray's defaults filled.

    Raises:
        jsonschema.ValidationError: a field is unknown or has the wrong type (Ray's schema forbids extras).
        ValueError: Ray's semantic checks (head_node_type, min/max workers) or ours (bounds per node type).
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    if not isinstance(config, dict):
        raise ValueError(f"a cluster config must be a mapping, got {type(config).__name__}")
    filled = prepare_config(copy.deepcopy(config))
    validate_config(filled)
    for name, nt in filled.get("available_node_types", {}).items():
        lo, hi = nt.get("min_workers", 0), nt.get("max_workers", 0)
        if lo > hi:
            raise ValueError(f"node type {name!r}: min_workers {lo} > max_workers {hi}")
        if hi > filled["max_workers"]:
            raise ValueError(f"node type {name!r}: max_workers {hi} > cluster max_workers {filled['max_workers']}")
    return filled


# --------------------------------------------------------------------------------------------------------------
# KubeRay (RayCluster, RayJob)
# --------------------------------------------------------------------------------------------------------------

def _get(d: Any, key: str) -> Any:
    return d.get(key) if isinstance(d, dict) else None


def _check_quantity(value: Any, where: str, errors: list[str]) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | str) or not _QUANTITY.match(str(value)):
        errors.append(f"{where}: {value!r} is not a Kubernetes quantity (e.g. '8', '500m', '64Gi')")


def _validate_container(c: Any, where: str, errors: list[str], require_resources: bool) -> None:
    if not isinstance(c, dict):
        errors.append(f"{where}: a container must be a mapping")
        return
    if not c.get("name"):
        errors.append(f"{where}.name is required")
    if not isinstance(c.get("image"), str) or not c.get("image"):
        errors.append(f"{where}.image is required")
    res = c.get("resources")
    limits = _get(res, "limits") or {}
    requests = _get(res, "requests") or {}
    if require_resources:
        if not isinstance(res, dict) or not limits:
            errors.append(f"{where}.resources.limits is required (KubeRay derives Ray's CPU/GPU/memory from it)")
        else:
            for k in ("cpu", "memory"):
                if k not in limits and k not in requests:
                    errors.append(f"{where}.resources: set {k} (limits or requests)")
    for kind, table in (("limits", limits), ("requests", requests)):
        if not isinstance(table, dict):
            errors.append(f"{where}.resources.{kind} must be a mapping")
            continue
        for k, v in table.items():
            _check_quantity(v, f"{where}.resources.{kind}.{k}", errors)
    if isinstance(requests, dict) and GPU_RESOURCE in requests:
        if not isinstance(limits, dict) or GPU_RESOURCE not in limits:
            errors.append(f"{where}: {GPU_RESOURCE} is requested but not limited (extended resources need limits)")
        elif str(limits[GPU_RESOURCE]) != str(requests[GPU_RESOURCE]):
            errors.append(f"{where}: {GPU_RESOURCE} requests and limits differ")
    for i, e in enumerate(c.get("env") or []):
        _validate_env(e, f"{where}.env[{i}]", errors)
    for i, e in enumerate(c.get("envFrom") or []):
        ref = _get(e, "secretRef") or _get(e, "configMapRef")
        if not _get(ref, "name"):
            errors.append(f"{where}.envFrom[{i}]: secretRef/configMapRef needs a name")


def _validate_env(e: Any, where: str, errors: list[str]) -> None:
    if not isinstance(e, dict) or not e.get("name"):
        errors.append(f"{where}: env entries need a name")
        return
    vf = e.get("valueFrom")
    if vf is not None:
        ref = _get(vf, "secretKeyRef")
        if ref is not None and not (_get(ref, "name") and _get(ref, "key")):
            errors.append(f"{where} ({e['name']}): secretKeyRef needs name and key")
    elif _SECRET_ENV.search(e["name"]) and "value" in e:
        errors.append(f"{where}: {e['name']} is set inline; use valueFrom.secretKeyRef (or IRSA / workload identity)")


def _validate_pod_template(tpl: Any, where: str, errors: list[str]) -> list[dict[str, Any]]:
    spec = _get(tpl, "spec")
    containers = _get(spec, "containers")
    if not isinstance(containers, list) or not containers:
        errors.append(f"{where}.spec.containers must be a non-empty list")
        return []
    for i, c in enumerate(containers):
        # the first container is the Ray container: KubeRay sizes the Ray node from its resources
        _validate_container(c, f"{where}.spec.containers[{i}]", errors, require_resources=(i == 0))
    volumes = spec.get("volumes") or []
    declared = {v.get("name") for v in volumes if isinstance(v, dict)}
    mounted: set[str] = set()
    for c in list(containers) + list(spec.get("initContainers") or []):
        for m in _get(c, "volumeMounts") or []:
            name = _get(m, "name")
            mounted.add(name)
            if name not in declared:
                errors.append(f"{where}: container {_get(c, 'name')!r} mounts undeclared volume {name!r}")
            if not _get(m, "mountPath"):
                errors.append(f"{where}: volumeMount {name!r} needs a mountPath")
    for v in volumes:
        name = _get(v, "name")
        if name not in mounted:
            errors.append(f"{where}: volume {name!r} is declared but never mounted")
        secret = _get(v, "secret")
        if secret is not None and not _get(secret, "secretName"):
            errors.append(f"{where}: secret volume {name!r} needs secretName")
        pvc = _get(v, "persistentVolumeClaim")
        if pvc is not None and not _get(pvc, "claimName"):
            errors.append(f"{where}: persistentVolumeClaim volume {name!r} needs claimName")
    return containers


def _validate_start_params(params: Any, where: str, errors: list[str], required: bool) -> None:
    if params is None:
        if required:
            errors.append(f"{where} is required (may be empty: {{}})")
        return
    if not isinstance(params, dict):
        errors.append(f"{where} must be a mapping")
        return
    for k, v in params.items():
        if not isinstance(v, str):
            errors.append(f"{where}.{k}: value {v!r} must be a string (quote it: '{v}'); the CRD rejects numbers")


def validate_ray_cluster_spec(spec: Any, where: str = "spec") -> list[str]:
    """Errors in a ``RayCluster.spec`` (also used for ``RayJob.spec.rayClusterSpec``)."""
    errors: list[str] = []
    if not isinstance(spec, dict):
        return [f"{where} must be a mapping"]
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        errors.append(f"{where}.headGroupSpec is required")
    else:
        _validate_start_params(head.get("rayStartParams"), f"{where}.headGroupSpec.rayStartParams", errors, True)
        _validate_pod_template(head.get("template"), f"{where}.headGroupSpec.template", errors)
    groups = spec.get("workerGroupSpecs", [])
    if not isinstance(groups, list):
        errors.append(f"{where}.workerGroupSpecs must be a list")
        groups = []
    seen: set[str] = set()
    for i, g in enumerate(groups):
        w = f"{where}.workerGroupSpecs[{i}]"
        if not isinstance(g, dict):
            errors.append(f"{w} must be a mapping")
            continue
        name = g.get("groupName")
        if not name or not isinstance(name, str):
            errors.append(f"{w}.groupName is required")
        elif name in seen:
            errors.append(f"{w}.groupName {name!r} is used twice")
        seen.add(name or "")
        nums = {}
        for key in ("replicas", "minReplicas", "maxReplicas"):
            val = g.get(key)
            if isinstance(val, bool) or not isinstance(val, int) or val < 0:
                errors.append(f"{w}.{key} must be a non-negative integer, got {val!r}")
            else:
                nums[key] = val
        if len(nums) == 3 and not nums["minReplicas"] <= nums["replicas"] <= nums["maxReplicas"]:
            errors.append(f"{w}: need minReplicas <= replicas <= maxReplicas, got {nums}")
        _validate_start_params(g.get("rayStartParams"), f"{w}.rayStartParams", errors, False)
        _validate_pod_template(g.get("template"), f"{w}.template", errors)
    return errors


def validate_kuberay(doc: Any) -> list[str]:
    """Errors in a KubeRay ``RayCluster`` or ``RayJob`` (``ray.io/v1``); an empty list means valid."""
    if not isinstance(doc, dict):
        return ["a manifest must be a mapping"]
    errors: list[str] = []
    if doc.get("apiVersion") != KUBERAY_API:
        errors.append(f"apiVersion must be {KUBERAY_API!r}, got {doc.get('apiVersion')!r}")
    kind = doc.get("kind")
    name = _get(doc.get("metadata"), "name")
    if not isinstance(name, str) or not _DNS1123.match(name) or len(name) > 63:
        errors.append(f"metadata.name {name!r} must be a DNS-1123 label (lowercase, digits, '-', <= 63 chars)")
    spec = doc.get("spec")
    if kind == "RayCluster":
        errors += validate_ray_cluster_spec(spec, "spec")
    elif kind == "RayJob":
        if not isinstance(spec, dict):
            return errors + ["spec is required"]
        if not isinstance(spec.get("entrypoint"), str) or not spec["entrypoint"].strip():
            errors.append("spec.entrypoint is required (the command `ray job submit` runs)")
        has_spec, has_sel = "rayClusterSpec" in spec, "clusterSelector" in spec
        if has_spec == has_sel:
            errors.append("set exactly one of spec.rayClusterSpec (new cluster) or spec.clusterSelector (existing)")
        if has_spec:
            errors += validate_ray_cluster_spec(spec["rayClusterSpec"], "spec.rayClusterSpec")
        if has_sel and (not isinstance(spec["clusterSelector"], dict) or not spec["clusterSelector"]):
            errors.append("spec.clusterSelector must be a non-empty label mapping (e.g. ray.io/cluster: NAME)")
        rte = spec.get("runtimeEnvYAML")
        if rte is not None:
            try:
                parsed = yaml.safe_load(rte) if isinstance(rte, str) else None
            except yaml.YAMLError as e:
                parsed = None
                errors.append(f"spec.runtimeEnvYAML is not valid YAML: {e}")
            if not isinstance(parsed, dict):
                errors.append("spec.runtimeEnvYAML must be a string holding a YAML mapping")
        mode = spec.get("submissionMode")
        if mode is not None and mode not in _SUBMISSION_MODES:
            errors.append(f"spec.submissionMode {mode!r} not in {sorted(_SUBMISSION_MODES)}")
        ttl = spec.get("ttlSecondsAfterFinished")
        if ttl is not None and not spec.get("shutdownAfterJobFinishes"):
            errors.append("spec.ttlSecondsAfterFinished only applies with shutdownAfterJobFinishes: true")
        if has_sel and spec.get("shutdownAfterJobFinishes"):
            errors.append("shutdownAfterJobFinishes would tear down a cluster this job did not create")
    else:
        errors.append(f"kind must be RayCluster or RayJob, got {kind!r}")
    return errors


def validate_file(path: str | Path) -> list[str]:
    """Validate every document of a YAML file: launcher configs, KubeRay resources; others only parse."""
    try:
        docs = load_yaml_documents(path)
    except (OSError, yaml.YAMLError) as e:
        return [f"cannot read YAML: {e}"]
    errors: list[str] = []
    for i, doc in enumerate(docs):
        prefix = f"document {i}: " if len(docs) > 1 else ""
        if not isinstance(doc, dict):
            errors.append(f"{prefix}not a mapping")
        elif doc.get("apiVersion", "").startswith("ray.io/"):
            errors += [prefix + e for e in validate_kuberay(doc)]
        elif "provider" in doc and "cluster_name" in doc:
            try:
                validate_launcher_config(doc)
            except Exception as e:  # jsonschema.ValidationError, ValueError, RuntimeError from Ray's checks
                errors.append(f"{prefix}{type(e).__name__}: {str(e).splitlines()[0]}")
    return errors
