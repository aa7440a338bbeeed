"""Reading the deployment files: compose, Kubernetes manifests, Dockerfiles."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from deploy.processes import command_line, parse_args
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# How the images, compose and Kubernetes start a worker or the notifier.
ENTRY = ["python", "-m", "deploy.processes"]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    return docs


def k8s(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} documents"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def dockerfile(name: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    lines = [line for line in (DEPLOY / name).read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, rest = line.strip().partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


def instructions(name: str, kind: str) -> list[str]:
    return [rest for instruction, rest in dockerfile(name) if instruction == kind]


def env_assignments(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in instructions(name, "ENV"):
        for item in shlex.split(rest):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def arg_defaults(name: str) -> dict[str, str]:
    args = {}
    for rest in instructions(name, "ARG"):
        key, _, value = rest.partition("=")
        args[key] = value.strip('"')
    return args


def copied(name: str) -> list[str]:
    """The sources of every COPY in the Dockerfile ``name``."""
    sources: list[str] = []
    for rest in instructions(name, "COPY"):
        parts = [part for part in rest.split() if not part.startswith("--")]
        sources.extend(parts[:-1])
    return sources


def queue_option(argv: list[str]) -> str:
    assert "-Q" in argv, argv
    return argv[argv.index("-Q") + 1]


def entry_argv(command: list[str], environ: Mapping[str, Any]) -> list[str]:
    """What ``python -m deploy.processes ...`` runs in a container with ``environ``."""
    assert command[:3] == ENTRY, command
    settings = Settings.from_env({key: str(value) for key, value in environ.items()})
    return command_line(parse_args(command[3:]), settings)
