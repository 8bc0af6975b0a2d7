"""Values read from the files under cluster/ that several test modules check against each other."""

from __future__ import annotations

from protclip.cluster_manifests import load_yaml_documents
from protclip.paths import REPO_ROOT

CLUSTER = REPO_ROOT / "cluster"


def mlflow_k8s_docs() -> dict[tuple[str, str], dict]:
    """The documents of cluster/mlflow/k8s.yaml keyed by (kind, name)."""
    return {(d["kind"], d["metadata"]["name"]): d for d in load_yaml_documents(CLUSTER / "mlflow" / "k8s.yaml")}


def mlflow_k8s_allowed_hosts() -> str:
    """The --allowed-hosts value of the MLflow Deployment."""
    args = mlflow_k8s_docs()[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]["args"]
    return next(a.split("=", 1)[1] for a in args if a.startswith("--allowed-hosts="))


def jobs_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI that the Ray pods get from the protclip-env ConfigMap."""
    docs = load_yaml_documents(CLUSTER / "kuberay" / "secrets.example.yaml")
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "protclip-env")
    return cm["data"]["MLFLOW_TRACKING_URI"]
