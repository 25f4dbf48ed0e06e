"""docker/ is checked here, because CI cannot build images or start containers.

Every file is parsed, and the files are held to each other and to the package: the Ray version in the base image,
the KubeRay manifest and pyproject.toml; one image name everywhere; every compose variable defined in
.env.example and no credential written down; published ports on localhost; health checks behind every
`service_healthy`; the MLflow server on PostgreSQL with proxied artifacts. (That every command line names a real
subcommand and real flags of an installed CLI is checked in tests/integration/test_deployment_commands.py: it
runs each CLI's `--help`.)
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deployment_files import (
    COMPOSE, CREDENTIAL_NAME, DOCKER, DOCKERFILE, DOCKERIGNORE, ENV_EXAMPLE, GPU_VARIANT, IMAGE_NAME, RAYJOB, ROOT,
    URL_WITH_PASSWORD, VARIABLE, command_lines, compose, compose_raw, dockerfile_from_lines, env_example, filled_env,
    guide_text, package_version, pinned_ray_version, pyproject, ray_cluster, rayjob, rayjob_documents,
    rayjob_pod_specs, resolve, services, split_image, tokenize, walk,
)

# ---------------------------------------------------------------------------------------------------------------
# The image


def test_dockerfile_base_images_carry_the_pinned_ray_version():
    ray = pinned_ray_version()
    images = dockerfile_from_lines()
    assert images, "docker/Dockerfile has no FROM"
    for image in images:
        name, tag = split_image(image)
        assert name == "rayproject/ray", f"{image}: base must be rayproject/ray (ray-ml is discontinued)"
        version, python, variant = tag.split("-", 2)
        assert version == ray, f"{image}: Ray {version} in the base image, but pyproject.toml pins ray=={ray}"
        assert python == "py311", f"{image}: expected a py311 image"
        assert GPU_VARIANT.match(variant), f"{image}: the default build must be a CUDA (-cuXYZ) image"


def test_dockerfile_has_a_cpu_variant_and_installs_from_pyproject():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG VARIANT=", text, re.M), "the base variant must be a build arg (VARIANT=cpu for CPU)"
    assert '"${VARIANT}" = "cpu"' in text, "VARIANT=cpu must switch PyTorch to its CPU wheels"
    installs = re.findall(r"pip install ([^\n\\&]+)", text)
    assert installs, "the Dockerfile must pip install the package"
    for arguments in installs:
        # One list of dependencies: the package's own pyproject, never a second list of names in the Dockerfile.
        assert arguments.split() == ['".[cluster]"'], f"pip install {arguments}: install the package, nothing else"
    assert "requirements" not in text
    for weights in (".pt", ".pth", ".safetensors", "huggingface-cli", "hf_hub_download", "wget", "curl "):
        assert weights not in text, f"the image must not fetch or bake in weights/data ({weights!r} in Dockerfile)"


def test_dockerignore_lets_in_only_what_the_build_needs():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert patterns[0] == "*", ".dockerignore must be an allow-list starting with *"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    project = pyproject()
    needed = {"pyproject.toml", project["project"]["readme"], "search_spaces",
              *(include.rstrip("*") for include in project["tool"]["setuptools"]["packages"]["find"]["include"])}
    assert needed <= allowed, f".dockerignore must let in {sorted(needed - allowed)}"
    assert allowed <= needed, f".dockerignore lets in more than the build needs: {sorted(allowed - needed)}"
    for excluded in ("**/*.pt", "**/*.pth", "**/*.safetensors"):
        assert excluded in patterns, f".dockerignore must exclude {excluded} even inside allowed folders"


# ---------------------------------------------------------------------------------------------------------------
# compose.yaml and .env.example


def test_env_example_parses_and_leaves_every_secret_empty():
    values = env_example()
    secrets = [key for key in values if CREDENTIAL_NAME.search(key)]
    assert secrets, "expected the credentials to be listed in .env.example"
    for key in secrets:
        assert values[key] == "", f".env.example: {key} must be empty (each user generates their own)"
    assert values["AACLIP_VERSION"] == package_version(), "AACLIP_VERSION must be pyproject.toml's version"
    assert values["BIND_ADDRESS"] == "127.0.0.1", "published ports must bind to localhost by default"


def test_every_compose_variable_is_defined_in_env_example():
    used = {match.group(1) for match in VARIABLE.finditer(COMPOSE.read_text()) if match.group(1)}
    missing = sorted(used - set(env_example()))
    assert not missing, f"compose.yaml uses variables that .env.example does not define: {missing}"
    unused = sorted(set(env_example()) - used)
    assert not unused, f".env.example defines variables compose.yaml never uses: {unused}"


def test_compose_requires_its_secrets_instead_of_defaulting_them():
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        resolve(compose_raw(), {**filled_env(), "POSTGRES_PASSWORD": ""})


def test_compose_writes_down_no_credential():
    for name, service in compose_raw()["services"].items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), f"{name}: use a mapping for environment"
        for key, value in environment.items():
            value = str(value)
            if CREDENTIAL_NAME.search(key) or key.endswith("_USER"):
                assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*(:\?[^}]*)?\}", value), (
                    f"{name}: {key} must come from .env (${{VAR}}), not {value!r}")
    for text in (node for node in walk(compose_raw()) if isinstance(node, str)):
        for user, password in URL_WITH_PASSWORD.findall(text):
            assert user.startswith("${") and password.startswith("${"), f"credential literal in a URL: {text}"


def test_published_ports_bind_to_localhost_by_default():
    published = 0
    for name, service in services().items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.count(":") == 2, f"{name}: write ports as HOST_IP:HOST:CONTAINER"
            assert port.split(":")[0] == "127.0.0.1", f"{name}: port {port} is not bound to 127.0.0.1"
            published += 1
    assert published >= 3, "expected MLflow, the Ray dashboard and the MinIO console to be published"


def test_depends_on_conditions_match_what_the_target_offers():
    all_services = services()
    for name, service in all_services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions (a mapping)"
        for target, condition in depends.items():
            assert target in all_services, f"{name} depends on unknown service {target}"
            condition = condition["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in all_services[target], f"{name} waits for {target} to be healthy: no healthcheck"
            elif condition == "service_completed_successfully":
                assert all_services[target].get("restart") == "no", f"{target} is awaited to finish: make it one-shot"
            else:
                pytest.fail(f"{name} -> {target}: condition {condition} waits for nothing; use healthy/completed")


def test_every_one_shot_job_is_awaited_by_a_long_running_service():
    # `docker compose up --wait` fails on a one-shot container that exits unless a running service adopts it.
    all_services = services()
    one_shots = {name for name, service in all_services.items() if service.get("restart") == "no"}
    for job in one_shots - {"study"}:
        adopters = [name for name, service in all_services.items() if name not in one_shots and
                    (service.get("depends_on") or {}).get(job, {}).get("condition") == "service_completed_successfully"]
        assert adopters, f"{job} is one-shot but no long-running service waits for it to complete"


def test_every_long_running_service_has_a_healthcheck():
    for name, service in services().items():
        if service.get("restart") != "no":
            assert "healthcheck" in service, f"{name}: long-running services need a healthcheck"


def image_references() -> list[tuple[str, str]]:
    found = [(f"compose {name}", service["image"]) for name, service in services().items() if "image" in service]
    found.append(("ray-cluster docker.image", ray_cluster()["docker"]["image"]))
    for spec in rayjob_pod_specs():
        found += [(f"rayjob {container['name']}", container["image"]) for container in spec["containers"]]
    return found


def test_every_image_is_pinned():
    for where, image in image_references():
        name, tag = split_image(image)
        assert tag, f"{where}: {image} has no tag"
        assert tag != "latest" and not tag.startswith("latest-"), f"{where}: {image} is not pinned"
        # A major-only tag (postgres:17) moves; a pin names a release (17.6, RELEASE.2025-..., 2.60.0-...).
        assert re.search(r"\d+\.\d+|RELEASE\.\d{4}", tag), f"{where}: {image}: pin a full version"


def test_one_aaclip_image_everywhere():
    expected = f"{IMAGE_NAME}:{package_version()}-{env_example()['AACLIP_VARIANT']}"
    ours = [(where, image) for where, image in image_references() if IMAGE_NAME in image]
    assert len(ours) >= 5, "expected the aaclip image in compose, the cluster launcher and the RayJob"
    for where, image in ours:
        assert image.rsplit("/", 1)[-1] == expected, f"{where}: {image}, expected .../{expected}"
    built = [service for service in services().values() if service.get("image", "").startswith(IMAGE_NAME)]
    for service in built:
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        assert service["build"]["args"]["VARIANT"] == env_example()["AACLIP_VARIANT"]


def test_compose_validates_against_the_compose_spec():
    try:
        from importlib.resources import files

        import jsonschema
        schema_file = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
        schema = json.loads(schema_file.read_text())
    except ModuleNotFoundError as error:
        message = f"{error.name} missing: install the test extra (check-jsonschema vendors the compose spec)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    jsonschema.validate(compose(), schema)


def listening_ports(service: dict[str, Any]) -> set[str]:
    ports = {str(port) for port in service.get("expose", [])}
    ports |= {port.rsplit(":", 1)[-1] for port in service.get("ports", [])}
    return ports


def test_service_addresses_name_real_services_and_ports():
    all_services = services()
    references = 0
    for name, service in all_services.items():
        addressable = {key: value for key, value in service.items() if key != "image"}  # name:tag is no address
        for text in (node for node in walk(addressable) if isinstance(node, str)):
            for host, port in re.findall(r"(?:^|[/@=])([a-z][a-z0-9-]*):(\d{2,5})\b", text):
                if host in ("localhost", "127.0.0.1") or "." in host:
                    continue
                references += 1
                assert host in all_services, f"{name}: {text} names no service {host}"
                assert port in listening_ports(all_services[host]), f"{name}: {host} does not listen on {port}"
    assert references >= 6


def test_mlflow_server_runs_on_postgres_with_proxied_artifacts():
    mlflow = services()["mlflow"]
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"]
    assert "--serve-artifacts" in command
    backend = mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert backend.startswith("postgresql"), f"MLflow backend must be PostgreSQL, got {backend.split(':')[0]}"
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert "/health" in " ".join(mlflow["healthcheck"]["test"])
    # Ray nodes reach MLflow by the host in their MLFLOW_TRACKING_URI: the server must accept that Host header.
    allowed = command[command.index("--allowed-hosts") + 1].split(",")
    tracking_host = services()["ray-head"]["environment"]["MLFLOW_TRACKING_URI"].split("//", 1)[1].rstrip("/")
    assert tracking_host in allowed, f"MLflow --allowed-hosts {allowed} rejects the Ray nodes' {tracking_host}"
    bucket_job = " ".join(services()["minio-init"]["entrypoint"])
    assert "mc mb" in bucket_job and "MLFLOW_BUCKET" in bucket_job


def test_ray_nodes_share_trial_storage_and_auth_settings():
    head, worker = services()["ray-head"], services()["ray-worker-gpu"]
    for node in (head, worker):
        assert any(volume.startswith("trial-storage:/mnt/aaclip") for volume in node["volumes"])
        assert node["environment"]["RAY_AUTH_MODE"] == head["environment"]["RAY_AUTH_MODE"]
    assert "--num-gpus=0" in head["command"], "GPU trials belong on the GPU workers"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] for device in devices)
    study = " ".join(services()["study"]["command"])
    assert "--storage /mnt/aaclip/" in study, "the study must write trials to the shared volume"
    # Specs say `root: data/...`, relative to the folder the driver runs in: data must be mounted right there.
    workdir = re.search(r"cd (\S+) &&", study).group(1)
    for node in (head, worker):
        assert any(volume.split(":")[1] == f"{workdir}/data" for volume in node["volumes"]), "datasets not mounted"


# ---------------------------------------------------------------------------------------------------------------
# Ray cluster launcher and KubeRay


def test_ray_cluster_config_is_valid_for_the_installed_ray():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(ray_cluster(), schema)
    config = ray_cluster()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU") == 0, "the head is a CPU node"
    workers = [spec for name, spec in config["available_node_types"].items() if name != config["head_node_type"]]
    assert any(spec["min_workers"] == 0 < spec["max_workers"] for spec in workers), "GPU workers must autoscale"
    assert any("--num-gpus=0" in command for command in config["head_start_ray_commands"])
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert any(".ray/auth_token" in target for target in config["file_mounts"]), "nodes need the Ray token"


def test_rayjob_matches_the_package_and_keeps_secrets_out():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == pinned_ray_version(), "rayVersion must be the Ray pinned in pyproject.toml"
    assert cluster.get("authOptions", {}).get("mode") == "token"
    lines = list(command_lines(tokenize(job["spec"]["entrypoint"])))
    assert [line[:2] for line in lines] == [["aaclip-study", "run"]], "the RayJob must run one study"
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    env_vars = runtime_env["env_vars"]
    assert env_vars["MLFLOW_TRACKING_URI"].startswith("http")
    secret_names = set()
    for spec in rayjob_pod_specs():
        for container in spec["containers"]:
            secret_names |= {source["secretRef"]["name"] for source in container.get("envFrom", [])}
    assert len(secret_names) == 1, "head and workers must read the same credentials Secret"
    for key, value in env_vars.items():
        if CREDENTIAL_NAME.search(key) or key.endswith(("_USERNAME", "_STORAGE")):
            # Expanded by Ray from the pod environment (the Secret); a literal here would be a leaked secret.
            assert value == f"${{{key}}}", f"runtimeEnvYAML {key} must be ${{{key}}}, not a literal"
        assert not URL_WITH_PASSWORD.search(str(value)), f"runtimeEnvYAML {key} holds a credential"
    # The driver forwards these itself through ray.init(runtime_env=...): Ray raises on the same key in the job's
    # runtime env unless RAY_OVERRIDE_JOB_RUNTIME_ENV=1 lets the driver's (equal) values win.
    from study.trainable import FORWARDED_ENV

    if set(env_vars) & set(FORWARDED_ENV):
        assert env_vars.get("RAY_OVERRIDE_JOB_RUNTIME_ENV") == "1", (
            f"runtimeEnvYAML sets {sorted(set(env_vars) & set(FORWARDED_ENV))}, which the driver also forwards")


def test_rayjob_gpu_workers_and_shared_storage():
    cluster = rayjob()["spec"]["rayClusterSpec"]
    claims = {doc["metadata"]["name"]: doc for doc in rayjob_documents() if doc.get("kind") == "PersistentVolumeClaim"}
    storage = re.search(r"--storage\s+(\S+)", rayjob()["spec"]["entrypoint"]).group(1)
    assert cluster["headGroupSpec"]["rayStartParams"].get("num-gpus") == "0"
    for group in cluster["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]), "GPU workers must tolerate the taint"
        assert group["minReplicas"] == 0 < group["maxReplicas"]
        for container in spec["containers"]:
            assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    for spec in rayjob_pod_specs():
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        mounts = {mount["name"]: mount["mountPath"] for c in spec["containers"] for mount in c["volumeMounts"]}
        claimed = {name: volume["persistentVolumeClaim"]["claimName"] for name, volume in volumes.items()
                   if "persistentVolumeClaim" in volume}
        for claim in claimed.values():
            assert claim in claims, f"PVC {claim} is used but not defined in rayjob.yaml"
        under_storage = [name for name in claimed if storage.startswith(mounts[name] + "/")]
        assert under_storage, f"--storage {storage} is not on a volume every Ray pod mounts"
        assert "ReadWriteMany" in claims[claimed[under_storage[0]]]["spec"]["accessModes"], "trials write there"
        # The specs' `root: data/...` is relative to the job's folder: the datasets must be mounted under it.
        workdir = re.match(r"cd (\S+) &&", rayjob()["spec"]["entrypoint"]).group(1)
        assert f"{workdir}/data" in mounts.values(), f"no datasets mounted at {workdir}/data"


def test_ci_install_script_is_idempotent_and_quiet():
    script = DOCKER / "ci-install-postgres.sh"
    assert os.access(script, os.X_OK), "docker/ci-install-postgres.sh must be executable"
    text = script.read_text()
    assert "apt-get install -y -qq" in text and "postgresql" in text
    assert re.search(r"if have_initdb; then\s+exit 0", text), "must do nothing when initdb is already there"
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_ci_installs_chromium_idempotently_for_the_browser_test():
    script = DOCKER / "ci-install-chromium.sh"
    assert os.access(script, os.X_OK), "docker/ci-install-chromium.sh must be executable"
    text = script.read_text()
    assert "apt-get update -qq" in text and "apt-get install -y -qq" in text and "chromium" in text
    assert re.search(r"if \[ -x /usr/bin/chromium \]; then\s+exit 0", text), "must do nothing when installed"
    assert "bash docker/ci-install-chromium.sh" in (DOCKER.parent / ".ci" / "run").read_text()
    subprocess.run(["bash", "-n", str(script)], check=True)


# ---------------------------------------------------------------------------------------------------------------
# The guide


def guide_yaml_blocks() -> list[Any]:
    blocks = re.findall(r"^```ya?ml\n(.*?)^```", guide_text(), re.S | re.M)
    return [yaml.safe_load(block) for block in blocks]


def test_guide_spec_fragments_use_real_keys():
    from aaclip.config import config_keys
    from study.spec import StudySpec, TrialsSpec

    fragments = guide_yaml_blocks()
    assert fragments, "the guide should show the spec keys a cluster run changes"
    leaves = config_keys()
    for fragment in fragments:
        unknown = set(fragment) - set(StudySpec.model_fields)
        assert not unknown, f"the guide shows spec keys that do not exist: {unknown}"
        for key in fragment.get("overrides", {}):
            is_key = key in leaves or any(leaf.startswith(key + ".") for leaf in leaves)
            assert is_key, f"overrides: {key} is no config key"
        trials = fragment.get("trials", {})
        assert set(trials) <= set(TrialsSpec.model_fields), f"trials: {set(trials) - set(TrialsSpec.model_fields)}"


def test_guide_walks_through_the_whole_path_in_order():
    text = guide_text()
    assert text.startswith("## Running on a cluster\n"), "the guide is the README section `## Running on a cluster`"
    steps = ["tracking", "launch", "watch", "inspect in mlflow", "export", "where things live",
             "sizing fractional gpus", "resuming after the head node dies"]
    headings = [line.lower() for line in text.splitlines() if line.startswith("### ")]
    positions = []
    for step in steps:
        found = [index for index, heading in enumerate(headings) if step in heading]
        assert found, f"the guide has no section about {step!r}"
        positions.append(found[0])
    assert positions == sorted(positions), "the guide's sections are out of order"
    for must in ("RAY_AUTH_MODE=disabled", "nvidia-smi", "#/experiments/", "--serve-artifacts", "checkpoint_"):
        assert must in text, f"the guide should mention {must}"


def test_every_spec_the_deployment_files_name_exists():
    texts = [COMPOSE.read_text(), ENV_EXAMPLE.read_text(), RAYJOB.read_text(), guide_text()]
    named = {match for text in texts for match in re.findall(r"search_spaces/([\w.-]+\.ya?ml)", text)}
    assert named, "expected the deployment files to name study specs"
    missing = sorted(name for name in named if not (ROOT / "search_spaces" / name).is_file())
    assert not missing, f"specs named in docker/ but not in search_spaces/: {missing}"
