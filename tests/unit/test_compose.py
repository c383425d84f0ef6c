"""Static checks of the scale-out stack: docker-compose.yml, .env.example and docker/.

No Docker engine is needed. The compose file is parsed with PyYAML and interpolated with the
values of .env.example the way `docker compose` does; the programs it starts are asked for
their ``--help`` so a misspelt flag fails here rather than in a crash-looping container.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from loopml.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PATH = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE_PATH = REPO_ROOT / ".env.example"
DOCKER_DIR = REPO_ROOT / "docker"
VENV_BIN = Path(sys.executable).parent
# Where docker/Dockerfile copies the repository inside the image.
IMAGE_APP_DIR = "/app"

TOP_LEVEL_KEYS = {"name", "version", "services", "volumes", "networks", "configs", "secrets"}
SERVICE_KEYS = {
    "build", "command", "configs", "container_name", "depends_on", "deploy", "entrypoint",
    "env_file", "environment", "expose", "extra_hosts", "healthcheck", "image", "init",
    "labels", "logging", "networks", "platform", "ports", "profiles", "pull_policy", "restart",
    "secrets", "stop_grace_period", "stop_signal", "tmpfs", "ulimits", "user", "volumes",
    "working_dir",
}  # fmt: skip
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval",
                    "disable"}  # fmt: skip
RESTART_POLICIES = {"no", "always", "unless-stopped", "on-failure"}
DEPENDS_ON_CONDITIONS = {
    "service_started",
    "service_healthy",
    "service_completed_successfully",
}
# Access key ids are user names; their secret halves match SECRET.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH_STRING|PRIVATE_KEY|API_KEY", re.I)
# `$$` is an escaped dollar; `${NAME[op arg]}` and `$NAME` are interpolations.
INTERPOLATION = re.compile(
    r"\$\$"
    r"|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)
REQUIRED_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}")
HELP_ENV = {
    "COLUMNS": "250",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "NO_COLOR": "1",
}


class MissingVariable(KeyError):
    """A `${VAR:?message}` reference whose variable is unset or empty."""


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file; comments and blank lines skipped."""
    values = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, separator, value = stripped.partition("=")
        assert separator, f"{path.name}: not KEY=VALUE: {line!r}"
        values[key.strip()] = value.strip()
    return values


def interpolate(text: str, environment: dict[str, str]) -> str:
    """Resolve compose interpolation in one string, as `docker compose config` would."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        operator, argument = match.group("op"), match.group("arg") or ""
        value = environment.get(name)
        is_set, is_non_empty = value is not None, bool(value)
        if operator == ":-":
            return value if is_non_empty else argument
        if operator == "-":
            return value if is_set else argument
        if operator == ":?" and not is_non_empty or operator == "?" and not is_set:
            raise MissingVariable(f"{name}: {argument}")
        if operator == ":+":
            return argument if is_non_empty else ""
        if operator == "+":
            return argument if is_set else ""
        return value or ""

    return INTERPOLATION.sub(replace, text)


def resolve(node: Any, environment: dict[str, str]) -> Any:
    """Interpolate every string value of a parsed compose document."""
    if isinstance(node, dict):
        return {key: resolve(value, environment) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, environment) for value in node]
    if isinstance(node, str):
        return interpolate(node, environment)
    return node


def iter_strings(node: Any):
    """Every string value below node."""
    if isinstance(node, dict):
        for value in node.values():
            yield from iter_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from iter_strings(value)
    elif isinstance(node, str):
        yield node


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, in map or list form, as a dict of strings."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def as_argv(value: str | list[str] | None) -> list[str]:
    """A command or entrypoint in either compose form, as an argument list."""
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(item) for item in value]


def flag_value(argv: list[str], flag: str) -> str:
    """The argument following `flag` in argv."""
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def uses_loopml_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and build.get("dockerfile") == "docker/Dockerfile"


def image_path_to_repo(path: str) -> Path | None:
    """A path inside the app image mapped back to the repository, if it comes from it."""
    if path == IMAGE_APP_DIR or path.startswith(IMAGE_APP_DIR + "/"):
        return REPO_ROOT / path.removeprefix(IMAGE_APP_DIR).lstrip("/")
    return None


def volume_entries(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume of a service, short or long syntax."""
    entries = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            entries.append((str(volume.get("source", "")), str(volume["target"])))
        else:
            source, _, rest = volume.partition(":")
            entries.append((source, rest.split(":")[0]))
    return entries


def is_bind_mount(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def database_urls(document: dict[str, Any]) -> list[str]:
    """Every PostgreSQL URL in the (resolved) compose document."""
    return [
        value
        for value in iter_strings(document)
        if re.match(r"postgresql(\+\w+)?://", value)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_PATH.read_text())
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    return document


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE_PATH)


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any], example_env: dict[str, str]) -> dict[str, Any]:
    """The compose document as `docker compose` sees it with .env copied from .env.example."""
    return resolve(raw_compose, example_env)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


# --- structure -------------------------------------------------------------------------------


def test_top_level_is_a_compose_document(raw_compose: dict[str, Any]) -> None:
    unknown = {key for key in raw_compose if key not in TOP_LEVEL_KEYS and not key.startswith("x-")}
    assert not unknown, f"unknown top-level keys: {unknown}"
    assert isinstance(raw_compose.get("services"), dict) and raw_compose["services"]
    assert isinstance(raw_compose.get("volumes"), dict)


def test_the_stack_has_every_engine(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "postgres", "minio", "minio-init", "mlflow", "prefect-server", "deployments",
        "prefect-worker", "dask-scheduler", "dask-worker", "evidently",
    }  # fmt: skip
    assert expected <= set(services), f"missing services: {expected - set(services)}"


def test_service_keys_are_compose_keys(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        unknown = set(service) - SERVICE_KEYS
        assert not unknown, f"{name}: unknown keys {unknown}"
        assert set(service.get("healthcheck") or {}) <= HEALTHCHECK_KEYS, name
        restart = str(service.get("restart", "no")).split(":")[0]
        assert restart in RESTART_POLICIES, f"{name}: restart {service.get('restart')!r}"


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"{name}: no image and no build"


def test_build_contexts_and_dockerfiles_exist(services: dict[str, dict[str, Any]]) -> None:
    builds = [(name, service["build"]) for name, service in services.items() if "build" in service]
    assert builds, "no service builds the loopml image"
    for name, build in builds:
        if isinstance(build, str):
            build = {"context": build}
        context = (REPO_ROOT / build.get("context", ".")).resolve()
        assert context.is_dir(), f"{name}: build context {context} missing"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"


def test_app_image_installs_the_pinned_set() -> None:
    dockerfile = (DOCKER_DIR / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r"pip install -c constraints\.txt \.", dockerfile)
    assert re.search(r"^COPY \. ", dockerfile, re.M), "the image must copy the repository"
    assert (REPO_ROOT / "constraints.txt").is_file()


def test_pinned_set_has_the_drivers_the_urls_need(compose: dict[str, Any]) -> None:
    pinned = {
        line.split("==")[0].strip().lower().replace("_", "-")
        for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    strings = list(iter_strings(compose))
    needed = {"psycopg2-binary": "postgresql://", "asyncpg": "postgresql+asyncpg://",
              "boto3": "s3://"}  # fmt: skip
    for package, scheme in needed.items():
        if any(scheme in value for value in strings):
            assert package in pinned, f"{scheme} URLs need {package} in constraints.txt"
    dockerfile = (DOCKER_DIR / "Dockerfile").read_text()
    # `mlflow server --app-name basic-auth` refuses to start without Flask-WTF.
    assert "flask-wtf" in pinned or "mlflow[auth]" in dockerfile


def test_shell_scripts_parse() -> None:
    scripts = sorted(DOCKER_DIR.glob("*.sh"))
    assert scripts
    for script in scripts:
        result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


# --- variables and secrets -------------------------------------------------------------------


def test_interpolations_are_well_formed(raw_compose: dict[str, Any]) -> None:
    for value in iter_strings(raw_compose):
        leftover = INTERPOLATION.sub("", value)
        assert "$" not in leftover, f"compose cannot interpolate {value!r} (`$$` is a literal $)"


def test_env_example_lists_exactly_the_variables_used(
    raw_compose: dict[str, Any], example_env: dict[str, str]
) -> None:
    used = {
        match.group("braced") or match.group("bare")
        for value in iter_strings(raw_compose)
        for match in INTERPOLATION.finditer(value)
        if match.group(0) != "$$"
    }
    assert used, "no interpolation found: secrets would be literal"
    assert used - set(example_env) == set(), "used in compose, missing from .env.example"
    assert set(example_env) - used == set(), "in .env.example, never used by compose"


def test_compose_needs_every_required_variable(
    raw_compose: dict[str, Any], example_env: dict[str, str]
) -> None:
    incomplete = dict(example_env)
    incomplete.pop("POSTGRES_PASSWORD")
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        resolve(raw_compose, incomplete)


def test_no_literal_secrets_in_compose(raw_compose: dict[str, Any]) -> None:
    for name, service in raw_compose["services"].items():
        for key, value in environment_of(service).items():
            if SECRET_NAME.search(key):
                assert REQUIRED_REFERENCE.fullmatch(value), (
                    f"{name}: {key} must be a ${{VAR:?...}} reference, not {value!r}"
                )
    for value in iter_strings(raw_compose):
        for url in re.findall(r"\w[\w+.-]*://\S+", value):
            password = urlsplit(url).password
            if password is not None:
                assert REQUIRED_REFERENCE.fullmatch(password), f"literal password in {url}"


def test_env_example_holds_placeholders_only(example_env: dict[str, str]) -> None:
    secrets = {key: value for key, value in example_env.items() if SECRET_NAME.search(key)}
    assert secrets, "no secret variables found: the name pattern is wrong"
    for key, value in secrets.items():
        assert "change-me" in value, f"{key} in .env.example must be a change-me placeholder"


def test_env_file_is_git_ignored() -> None:
    ignored = (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in [line.strip() for line in ignored]


# --- volumes, ports, dependencies, health ----------------------------------------------------


def test_named_volumes_are_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = {
        source
        for service in compose["services"].values()
        for source, _ in volume_entries(service)
        if source and not is_bind_mount(source)
    }
    assert used <= declared, f"undeclared volumes: {used - declared}"
    assert declared <= used, f"declared but unused volumes: {declared - used}"


def test_bind_mounted_files_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for source, _ in volume_entries(service):
            if is_bind_mount(source):
                assert source == "." or source.startswith("./"), f"{name}: {source} outside repo"
                assert (REPO_ROOT / source).exists(), f"{name}: {source} does not exist"


def test_published_ports_bind_localhost(services: dict[str, dict[str, Any]]) -> None:
    published = 0
    for name, service in services.items():
        for port in service.get("ports") or []:
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port} binds all interfaces"
    assert published, "no port is published: the UIs would be unreachable"


def test_depends_on_targets_exist_and_are_ready(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: use the long depends_on form"
        for target, options in depends_on.items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = options.get("condition")
            assert condition in DEPENDS_ON_CONDITIONS, f"{name} -> {target}: {condition}"
            if condition == "service_healthy":
                assert services[target].get("healthcheck", {}).get("test"), (
                    f"{name} waits for {target} to be healthy but it has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", (
                    f"{target} is a one-shot: restart must be 'no'"
                )


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if service.get("restart") == "no":
            continue
        assert service.get("restart") in {"unless-stopped", "always"}, name
        test = service.get("healthcheck", {}).get("test")
        assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"}, name


@pytest.mark.parametrize(
    ("service_name", "endpoint"),
    [
        ("prefect-server", "/api/health"),
        ("mlflow", "/health"),
        ("evidently", ":8000/"),
        ("dask-scheduler", ":8787/health"),
        ("dask-worker", "/health"),
        ("prefect-worker", "/health"),
    ],
)
def test_http_healthchecks_probe_the_program_endpoint(
    services: dict[str, dict[str, Any]], service_name: str, endpoint: str
) -> None:
    probe = " ".join(services[service_name]["healthcheck"]["test"])
    assert f"{endpoint}'" in probe


def test_postgres_and_minio_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["minio"]["healthcheck"]["test"][1:] == ["mc", "ready", "local"]


# --- the programs ----------------------------------------------------------------------------


def test_loopml_services_run_programs_that_exist(services: dict[str, dict[str, Any]]) -> None:
    checked = 0
    for name, service in services.items():
        if not uses_loopml_image(service):
            continue
        entrypoint = as_argv(service.get("entrypoint"))
        if entrypoint:
            assert entrypoint[0] in {"/bin/sh", "sh"}, f"{name}: entrypoint {entrypoint}"
            script = image_path_to_repo(entrypoint[1])
            assert script is not None and script.is_file(), f"{name}: {entrypoint[1]} missing"
        command = as_argv(service.get("command"))
        if command:
            assert shutil.which(command[0], path=str(VENV_BIN)), f"{name}: {command[0]} missing"
            checked += 1
    assert checked >= 5


def subcommand_of(command: list[str]) -> list[str]:
    """Program and subcommand words (before the first option or positional value)."""
    words = []
    for token in command:
        if not re.fullmatch(r"[a-z][a-z-]*", token):
            break
        words.append(token)
    return words


FLAG_CHECKED_SERVICES = [
    "mlflow", "prefect-server", "prefect-worker", "evidently", "dask-scheduler", "dask-worker",
]  # fmt: skip


@pytest.fixture(scope="module")
def help_texts(services: dict[str, dict[str, Any]]) -> dict[str, subprocess.CompletedProcess]:
    """`<program> <subcommand> --help` of each checked service, run side by side (imports of
    mlflow and evidently take several seconds each)."""
    running = {}
    for service_name in FLAG_CHECKED_SERVICES:
        words = subcommand_of(as_argv(services[service_name]["command"]))
        program = shutil.which(words[0], path=str(VENV_BIN)) if words else None
        if len(words) < 2 or program is None:
            continue
        argv = [program, *words[1:], "--help"]
        running[service_name] = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **HELP_ENV},
        )
    results = {}
    for service_name, process in running.items():
        stdout, stderr = process.communicate(timeout=180)
        results[service_name] = subprocess.CompletedProcess(
            process.args, process.returncode, stdout, stderr
        )
    return results


@pytest.mark.parametrize("service_name", FLAG_CHECKED_SERVICES)
def test_command_flags_exist(
    services: dict[str, dict[str, Any]],
    help_texts: dict[str, subprocess.CompletedProcess],
    service_name: str,
) -> None:
    command = as_argv(services[service_name]["command"])
    words = subcommand_of(command)
    assert len(words) >= 2, f"{service_name}: no subcommand in {command}"
    assert service_name in help_texts, f"{words[0]} is not installed in {VENV_BIN}"
    result = help_texts[service_name]
    assert result.returncode == 0, result.stderr
    flags = [token.split("=")[0] for token in command if token.startswith("--")]
    assert flags
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", result.stdout), (
            f"{' '.join(words)} has no {flag}"
        )


def test_mlflow_server_uses_basic_auth_postgres_and_minio(
    services: dict[str, dict[str, Any]],
) -> None:
    mlflow = services["mlflow"]
    command = as_argv(mlflow["command"])
    environment = environment_of(mlflow)
    assert command[:2] == ["mlflow", "server"]
    assert flag_value(command, "--app-name") == "basic-auth"
    assert "--serve-artifacts" in command
    assert flag_value(command, "--host") == "0.0.0.0"
    backend = urlsplit(flag_value(command, "--backend-store-uri"))
    assert (backend.scheme, backend.hostname, backend.path) == ("postgresql", "postgres", "/mlflow")
    bucket = environment_of(services["minio-init"])["MLFLOW_BUCKET"]
    assert flag_value(command, "--artifacts-destination") == f"s3://{bucket}/"
    assert environment["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert environment["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert environment["MLFLOW_AUTH_CONFIG_PATH"].endswith(".ini")
    auth_store = urlsplit(environment["MLFLOW_AUTH_DATABASE_URI"])
    assert (auth_store.scheme, auth_store.hostname) == ("postgresql", "postgres")
    assert environment["MLFLOW_AUTH_ADMIN_PASSWORD"]
    # The server reaches MinIO with the service account minio-init creates.
    init_environment = environment_of(services["minio-init"])
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert environment[key] == init_environment[key]
        assert environment[key] != init_environment["MINIO_ROOT_PASSWORD"]


def test_prefect_server_uses_postgres_and_the_auth_string(
    services: dict[str, dict[str, Any]],
) -> None:
    server = services["prefect-server"]
    command = as_argv(server["command"])
    assert command[:3] == ["prefect", "server", "start"]
    assert flag_value(command, "--host") == "0.0.0.0"
    environment = environment_of(server)
    database = urlsplit(environment["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
    assert (database.scheme, database.hostname, database.path) == (
        "postgresql+asyncpg",
        "postgres",
        "/prefect",
    )
    auth_string = environment["PREFECT_SERVER_API_AUTH_STRING"]
    assert ":" in auth_string
    for client in ("prefect-worker", "dask-worker", "deployments"):
        client_environment = environment_of(services[client])
        assert client_environment["PREFECT_API_AUTH_STRING"] == auth_string, client
        assert client_environment["PREFECT_API_URL"] == "http://prefect-server:4200/api", client


def test_postgres_init_creates_every_database(compose: dict[str, Any]) -> None:
    created = set(
        re.findall(r"CREATE DATABASE (\w+)", (DOCKER_DIR / "postgres-init.sql").read_text(), re.I)
    )
    referenced = {urlsplit(url).path.lstrip("/") for url in database_urls(compose)}
    assert {"prefect", "mlflow", "optuna"} <= referenced
    assert referenced <= created, f"not created by postgres-init.sql: {referenced - created}"


@pytest.mark.parametrize("service_name", ["prefect-worker", "dask-worker", "deployments"])
def test_flow_processes_see_the_scale_out_settings(
    services: dict[str, dict[str, Any]], service_name: str
) -> None:
    service = services[service_name]
    settings = load_settings(environment_of(service))
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    assert settings.prefect_api_url == "http://prefect-server:4200/api"
    optuna = urlsplit(settings.optuna_storage)
    assert (optuna.scheme, optuna.hostname, optuna.path) == ("postgresql", "postgres", "/optuna")
    scheduler_port = flag_value(as_argv(services["dask-scheduler"]["command"]), "--port")
    assert settings.dask_address == f"tcp://dask-scheduler:{scheduler_port}"
    environment = environment_of(service)
    assert environment["MLFLOW_TRACKING_USERNAME"] and environment["MLFLOW_TRACKING_PASSWORD"]
    # LOOPML_HOME is the shared volume, so reports and the Evidently workspace are shared.
    assert ("loopml-home", str(settings.home)) in volume_entries(service)


def test_dask_workers_join_the_scheduler(services: dict[str, dict[str, Any]]) -> None:
    settings = load_settings(environment_of(services["prefect-worker"]))
    command = as_argv(services["dask-worker"]["command"])
    assert command[:3] == ["dask", "worker", settings.dask_address]
    assert flag_value(command, "--nthreads") == "1"
    assert not services["dask-worker"].get("ports"), "published ports break --scale"


def test_evidently_serves_the_flows_workspace(services: dict[str, dict[str, Any]]) -> None:
    settings = load_settings(environment_of(services["prefect-worker"]))
    command = as_argv(services["evidently"]["command"])
    assert command[:2] == ["evidently", "ui"]
    assert flag_value(command, "--workspace") == str(settings.evidently_workspace)
    assert ("loopml-home", str(settings.home)) in volume_entries(services["evidently"])
    assert environment_of(services["evidently"])["EVIDENTLY_SECRET"]


def test_worker_pool_matches_the_deployments(services: dict[str, dict[str, Any]]) -> None:
    command = as_argv(services["prefect-worker"]["command"])
    pool = flag_value(command, "--pool")
    assert flag_value(command, "--type") == "process"
    deployments_environment = environment_of(services["deployments"])
    assert deployments_environment["LOOPML_WORK_POOL"] == pool
    prefect_file = image_path_to_repo(deployments_environment["LOOPML_PREFECT_FILE"])
    assert prefect_file is not None and prefect_file.name == "prefect.yaml"
    if not prefect_file.exists():
        pytest.skip(f"{prefect_file.relative_to(REPO_ROOT)} not written yet")
    project = yaml.safe_load(prefect_file.read_text())
    assert project.get("deployments"), "prefect.yaml declares no deployments"
    for deployment in project["deployments"]:
        work_pool = (deployment.get("work_pool") or {}).get("name")
        assert work_pool == pool, f"{deployment.get('name')}: work pool {work_pool!r} != {pool}"


@pytest.mark.parametrize("service_name", ["prefect-worker", "dask-worker", "deployments"])
def test_flow_processes_see_the_project_folder(
    services: dict[str, dict[str, Any]], service_name: str
) -> None:
    service = services[service_name]
    project_dir = environment_of(service)["LOOPML_PROJECT_DIR"]
    mounted = [source for source, target in volume_entries(service) if target == project_dir]
    assert mounted, f"{service_name}: nothing mounted at LOOPML_PROJECT_DIR={project_dir}"
    assert (REPO_ROOT / mounted[0]).is_dir()


def test_deployments_service_provides_what_prefect_yaml_reads(
    services: dict[str, dict[str, Any]],
) -> None:
    environment = environment_of(services["deployments"])
    prefect_file = image_path_to_repo(environment["LOOPML_PREFECT_FILE"])
    assert prefect_file is not None
    if not prefect_file.exists():
        pytest.skip(f"{prefect_file.relative_to(REPO_ROOT)} not written yet")
    # prefect.yaml templates `{{ $NAME }}` from the environment of `prefect deploy`.
    needed = set(re.findall(r"\{\{\s*\$(\w+)\s*\}\}", prefect_file.read_text()))
    assert needed - set(environment) == set(), "prefect.yaml reads variables the service lacks"
    assert environment["LOOPML_PROJECT"]


def test_mlflow_entrypoint_writes_a_config_mlflow_reads(tmp_path: Path) -> None:
    config_path = tmp_path / "auth" / "basic_auth.ini"
    # A URL-encoded password contains `%`, which configparser would try to interpolate.
    database_uri = "postgresql://loopml:p%40ss%25word@postgres:5432/mlflow_auth"
    # Load mlflow/server/auth/config.py on its own: importing the mlflow.server.auth package
    # needs Flask-WTF (the image installs mlflow[auth]; the dev venv may not have it).
    read_config = (
        "import importlib.util, json, mlflow.server, pathlib; "
        "path = pathlib.Path(mlflow.server.__file__).parent / 'auth' / 'config.py'; "
        "spec = importlib.util.spec_from_file_location('auth_config', path); "
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "print(json.dumps(module.read_auth_config()._asdict()))"
    )
    result = subprocess.run(
        ["sh", str(DOCKER_DIR / "mlflow-entrypoint.sh"), sys.executable, "-c", read_config],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            **HELP_ENV,
            "MLFLOW_AUTH_CONFIG_PATH": str(config_path),
            "MLFLOW_AUTH_DATABASE_URI": database_uri,
            "MLFLOW_AUTH_ADMIN_USERNAME": "loopml-admin",
            "MLFLOW_AUTH_ADMIN_PASSWORD": "change-me-long-password",
        },
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout.strip().splitlines()[-1])
    assert config["database_uri"] == database_uri
    assert config["admin_username"] == "loopml-admin"
    assert config["admin_password"] == "change-me-long-password"
    assert config["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    assert "change-me-long-password" not in config_path.read_text()


def test_mlflow_entrypoint_refuses_to_start_without_its_settings(tmp_path: Path) -> None:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_AUTH_")
    }
    environment["MLFLOW_AUTH_CONFIG_PATH"] = str(tmp_path / "basic_auth.ini")
    result = subprocess.run(
        ["sh", str(DOCKER_DIR / "mlflow-entrypoint.sh"), "true"],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert result.returncode != 0
    assert "MLFLOW_AUTH_DATABASE_URI" in result.stderr
