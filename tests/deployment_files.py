"""The deployment files of docker/ and the cluster guide, parsed: shared by the unit checks of their contents
(tests/unit/test_docker_files.py) and the integration checks of their command lines against the installed CLIs
(tests/integration/test_deployment_commands.py).
"""
from __future__ import annotations

import functools
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILE = DOCKER / "Dockerfile"
RAY_CLUSTER = DOCKER / "ray-cluster.yaml"
RAYJOB = DOCKER / "kuberay" / "rayjob.yaml"
GUIDE = DOCKER / "README-cluster.md"  # the README's "Running on a cluster" section, before it is inlined
DOCKERIGNORE = ROOT / ".dockerignore"

IMAGE_NAME = "aaclip-study"
GPU_VARIANT = re.compile(r"^cu\d{3}$")
CREDENTIAL_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
URL_WITH_PASSWORD = re.compile(r"://([^/\s:@]+):([^/\s@]+)@")


# ---------------------------------------------------------------------------------------------------------------
# Loading


@functools.cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned_ray_version() -> str:
    pins = [re.fullmatch(r"ray(\[[^\]]*\])?==([0-9][0-9.]*)", dep.replace(" ", ""))
            for dep in pyproject()["project"]["dependencies"]]
    versions = [pin.group(2) for pin in pins if pin]
    assert len(versions) == 1, "pyproject.toml must pin ray exactly once (ray[tune]==X.Y.Z)"
    return versions[0]


def package_version() -> str:
    return pyproject()["project"]["version"]


@functools.cache
def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", line)
        assert match, f".env.example:{number}: not KEY=VALUE: {line!r}"
        key, value = match.groups()
        assert key not in values, f".env.example:{number}: {key} defined twice"
        values[key] = value
    return values


def filled_env() -> dict[str, str]:
    """.env.example with its empty secrets filled in, as a user's .env would be."""
    return {key: (value or f"test-{key.lower()}") for key, value in env_example().items()}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?message} and $$ rules, enough for these files."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        if name in env and (env[name] or not (operator or "").startswith(":")):
            return env[name]
        if operator and operator.endswith("?"):
            raise KeyError(f"{name}: {argument}")
        return argument or ""
    return VARIABLE.sub(replace, value)


def resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


@functools.cache
def compose_raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@functools.cache
def compose() -> dict[str, Any]:
    """The compose file as `docker compose config` would see it with a .env made from .env.example."""
    return resolve(compose_raw(), filled_env())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


@functools.cache
def ray_cluster() -> dict[str, Any]:
    return yaml.safe_load(RAY_CLUSTER.read_text())


@functools.cache
def rayjob_documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(RAYJOB.read_text()) if doc]


def rayjob() -> dict[str, Any]:
    jobs = [doc for doc in rayjob_documents() if doc.get("kind") == "RayJob"]
    assert len(jobs) == 1, "docker/kuberay/rayjob.yaml must hold exactly one RayJob"
    return jobs[0]


def rayjob_pod_specs() -> list[dict[str, Any]]:
    cluster = rayjob()["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]["spec"],
            *[group["template"]["spec"] for group in cluster["workerGroupSpecs"]]]


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


@functools.cache
def guide_text() -> str:
    """The "## Running on a cluster" section: docker/README-cluster.md, or the README.md it was inlined into."""
    if GUIDE.is_file():
        return GUIDE.read_text()
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## Running on a cluster\n.*?(?=^## |\Z)", readme, re.S | re.M)
    assert match, "README.md has no `## Running on a cluster` section (nor is docker/README-cluster.md there)"
    return match.group(0)


def dockerfile_from_lines() -> list[str]:
    """The FROM images with the Dockerfile's global ARG defaults substituted."""
    args: dict[str, str] = {}
    images = []
    for line in DOCKERFILE.read_text().splitlines():
        arg = re.match(r"ARG\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)", line)
        if arg and not images:  # only ARGs before the first FROM are visible in FROM lines
            args[arg.group(1)] = arg.group(2)
        match = re.match(r"FROM\s+(\S+)", line)
        if match:
            images.append(re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], match.group(1)))
    return images


def split_image(image: str) -> tuple[str, str]:
    """'registry/ns/name:tag' -> ('registry/ns/name', 'tag'); ('...', '') when untagged."""
    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    return name, tag


# ---------------------------------------------------------------------------------------------------------------
# Command lines in shell text


# The CLIs whose command lines are checked against their own --help.
PROGRAMS = ("aaclip-study", "aaclip", "ray", "mlflow", "optuna-dashboard")
SHELL_SEPARATORS = {";", "&&", "||", "|", "&", ">", ">>", "<", "(", ")", "--"}


def tokenize(text: str) -> list[str]:
    lexer = shlex.shlex(text.replace("\\\n", " "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def command_lines(tokens: list[str]) -> Iterator[list[str]]:
    """Each run of tokens that starts with a checked program in command position, up to the next separator.

    Command position: the start, after a shell separator or `--` (ray job submit -- CMD), after VAR=value, exec
    or sudo, or after the service name of `docker compose exec|run SERVICE` -- so `docker compose up mlflow` is
    no command.
    """
    service_names = set(compose_raw()["services"])
    current: list[str] | None = None
    previous: str | None = None
    for token in tokens:
        in_position = (previous is None or previous in SHELL_SEPARATORS or previous in service_names
                       or previous in ("exec", "sudo") or re.match(r"^[A-Z_][A-Z0-9_]*=", previous) is not None)
        if token in PROGRAMS and in_position:
            if current:
                yield current
            current = [token]
        elif token in SHELL_SEPARATORS:
            if current:
                yield current
            current = None
        elif current is not None:
            current.append(token)
        previous = token
    if current:
        yield current
