"""The deployment recipes as written: deploy/docker (image, compose file) and
deploy/kubernetes (DaskCluster, Prefect worker), with their job configs.

There is no container runtime or Kubernetes cluster here, so each file is checked with the
real validator of its format (the Compose specification's JSON schema, Kubernetes' OpenAPI
schemas, the dask-kubernetes operator's CRD), and the compose stack is run as plain
processes: every service's command and environment, as Compose would interpolate them from
example.env, with the services' host names replaced by 127.0.0.1 and free ports, MinIO by
the suite's S3 server (moto) and Postgres by SQLite; then the nightly deployment runs on
that stack and the README's commands read what it wrote.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, Processes, free_port

DOCKER = ROOT / "deploy" / "docker"
KUBERNETES = ROOT / "deploy" / "kubernetes"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
BIN = Path(sys.executable).parent
# the image's paths (Dockerfile WORKDIR and the user's home) as they are here
IMAGE_HOME = "/opt/daskgmm"
USER_HOME = "/home/daskgmm"
POOL = "daskgmm-compose"


# --- Compose, the way docker compose reads it -----------------------------------------------

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_]\w*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_]\w*)(?:(?P<op>:-|-|:\?|\?)(?P<arg>.*))?", re.DOTALL)


def interpolate(value, env):
    """``value`` (any YAML node) with Compose's interpolation applied: ``$$``, ``$NAME``,
    ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``, ``${NAME:?error}``,
    ``${NAME?error}``. A required variable that is unset raises, as compose does."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match):
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        parts = _BRACED.fullmatch(match["braced"])
        assert parts, f"Compose cannot read ${{{match['braced']}}}"
        name, op, arg = parts["name"], parts["op"], parts["arg"]
        have = env.get(name)
        if op in (":-", ":?") and have == "":
            have = None
        if have is not None:
            return have
        if op in (":?", "?"):
            raise KeyError(f"required variable {name} is not set: {arg}")
        return arg if op in (":-", "-") else ""

    return _VARIABLE.sub(one, value)


def read_env_file(path) -> dict:
    """KEY=VALUE lines of a Compose .env file (comments and blank lines skipped)."""
    values = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def compose_file(**env) -> dict:
    """deploy/docker/compose.yaml, interpolated from example.env plus ``env``."""
    raw = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return interpolate(raw, {**read_env_file(DOCKER / "example.env"), **env})


def service_argv(service: dict) -> list[str]:
    """What a container of ``service`` runs: its entrypoint, then its command (the image
    has no ENTRYPOINT; its CMD applies when the service gives no command)."""
    def words(value):
        if value is None:
            return []
        return shlex.split(value) if isinstance(value, str) else list(value)

    argv = words(service.get("entrypoint")) + words(service.get("command"))
    assert argv, f"service without a command: {service}"
    return argv


def dockerfile_env() -> dict:
    """The ENV of deploy/docker/Dockerfile (its final stage)."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(word.split("=", 1) for word in shlex.split(line[4:]))
    return env


class Here:
    """Where the compose services' addresses and paths are on this machine."""

    def __init__(self, s3_endpoint, home):
        self.ports = {"dask-scheduler:8786": free_port(), "dask-scheduler:8787": free_port(),
                      "prefect-server:4200": free_port()}
        self.s3_endpoint = s3_endpoint
        self.home = home

    def address(self, service):
        return f"127.0.0.1:{self.ports[service]}"

    def text(self, value: str) -> str:
        value = value.replace("http://minio:9000", self.s3_endpoint)
        for service in self.ports:
            value = value.replace(service, self.address(service))
        value = value.replace(USER_HOME, str(self.home)).replace(IMAGE_HOME, str(ROOT))
        return value.replace("0.0.0.0", "127.0.0.1")

    def argv(self, argv: list[str], service: str) -> list[str]:
        """``argv`` of ``service`` with its listening port and its peers' addresses
        moved here; the executable is found on this venv's PATH."""
        out = []
        for i, word in enumerate(argv):
            flag = argv[i - 1] if i else ""
            if flag == "--port":
                word = str(self.ports[f"{service}:{word}"])
            elif flag == "--dashboard-address":
                word = f"127.0.0.1:{self.ports[f'{service}{word}']}"
            out.append(self.text(word))
        return out

    def env(self, service: dict, **more) -> dict:
        """The environment of a container of ``service``: the image's ENV and the
        service's ``environment``, moved here; nothing of this process's Prefect, AWS or
        Dask settings."""
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("PREFECT_", "AWS_", "DASK_"))}
        env.update({key: self.text(value) for key, value in dockerfile_env().items()})
        env.update({key: self.text(str(value))
                    for key, value in (service.get("environment") or {}).items()})
        env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
        env["HOME"] = str(self.home)
        env.update(more)
        return env

    def cwd(self, service: dict) -> str:
        return self.text(service.get("working_dir", IMAGE_HOME))


def wait_until(check, what, timeout=120, proc=None, log=""):
    """Poll ``check()`` until it returns a true value; fail naming ``what`` (and the
    process's log) after ``timeout`` seconds or when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}:\n{log()}")
        time.sleep(0.5)
    pytest.fail(f"{what}: not after {timeout} s" + (f":\n{log()}" if log else ""))


def get_json(url, body=None):
    request = urllib.request.Request(
        url, data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or "null")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def run(argv, env, cwd, timeout=300):
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (
        f"{shlex.join(argv)} exited with {done.returncode}:\n{done.stdout[-3000:]}\n"
        f"{done.stderr[-3000:]}")
    return done.stdout + done.stderr


# --- the compose file and the image, read ---------------------------------------------------

SERVICES = {"postgres", "prefect-server", "prefect-worker", "dask-scheduler", "dask-worker-1",
            "dask-worker-2", "minio", "demo-data", "deploy"}


def check_jsonschema(schema, *files):
    return subprocess.run([str(BIN / "check-jsonschema"), "--schemafile", str(schema),
                           *map(str, files)], capture_output=True, text=True, timeout=120)


def test_compose_file_is_valid_compose(tmp_path):
    done = check_jsonschema(SCHEMAS / "compose-spec.json", DOCKER / "compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    # the schema is in force: a misspelt condition is refused, naming it
    broken = (DOCKER / "compose.yaml").read_text().replace(
        "condition: service_healthy", "condition: service_ready", 1)
    (tmp_path / "compose.yaml").write_text(broken)
    done = check_jsonschema(SCHEMAS / "compose-spec.json", tmp_path / "compose.yaml")
    assert done.returncode == 1 and "service_ready" in done.stdout


def test_compose_services_and_secrets():
    compose = compose_file()
    services = compose["services"]
    assert set(services) == SERVICES
    built = {name for name, s in services.items() if "build" in s}
    assert built == SERVICES - {"postgres", "minio"}
    for name in built:
        assert services[name]["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert all(services[n]["depends_on"] for n in SERVICES - {"postgres", "minio",
                                                              "dask-scheduler"})
    server = services["prefect-server"]["environment"]
    assert server["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://prefect:FAKE-postgres-password-change-me@postgres:5432/")
    assert services["prefect-worker"]["environment"]["PREFECT_API_URL"] == (
        "http://prefect-server:4200/api")
    for worker in ("dask-worker-1", "dask-worker-2"):
        argv = service_argv(services[worker])
        assert argv[argv.index("--memory-limit") + 1] == "2GiB"
        bigger = service_argv(compose_file(DASK_WORKER_MEMORY="6GiB")["services"][worker])
        assert bigger[bigger.index("--memory-limit") + 1] == "6GiB"

    # secrets come from .env only: without them compose refuses to start, naming them
    for name in ("POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY"):
        with pytest.raises(KeyError, match=f"{name} is not set: set {name} in "):
            compose_file(**{name: ""})
    text = (DOCKER / "compose.yaml").read_text()
    for value in read_env_file(DOCKER / "example.env").values():
        if "FAKE" in value:
            assert value not in text
    assert all("FAKE" in v for k, v in read_env_file(DOCKER / "example.env").items()
               if re.search("PASSWORD|SECRET|KEY", k))


def test_dockerfile():
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)[1]
    assert re.fullmatch(r"python:3\.1[12]-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base)
    # the Python constraints.txt was made with (its markers were evaluated for it)
    made_with = re.search(r"\(Python (3\.\d+), linux\)",
                          (DOCKER / "constraints.txt").read_text())[1]
    assert base.startswith(f"python:{made_with}-slim")
    instructions = [line.split(None, 1) for line in text.replace("\\\n", " ").splitlines()
                    if line and not line.startswith("#")]
    assert instructions[-1][0] == "CMD"
    users = [args for op, args in instructions if op == "USER"]
    uid = re.search(r"useradd --uid (\d+) --gid daskgmm", text)[1]
    assert users and users[-1] == f"{uid}:{uid}" and int(uid) > 0   # numeric: not root
    # the Kubernetes recipe runs every pod as that user
    for resource in manifests("daskcluster.yaml") + manifests("prefect-worker.yaml"):
        pods = [resource["spec"][part]["spec"] for part in ("scheduler", "worker")
                if part in resource.get("spec", {})]
        if resource["kind"] == "Deployment":
            pods = [resource["spec"]["template"]["spec"]]
        for pod in pods:
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] == int(uid)
    # named sources only: .env files, keys and certificates cannot be copied in
    sources = [shlex.split(args)[:-1] for op, args in instructions if op == "COPY"]
    copied = {source for group in sources for source in group}
    assert copied == {"deploy/docker/constraints.txt", "pyproject.toml", "README.md",
                      "daskgmm", "pipelines", "configs", "deploy/docker/prefect.yaml"}
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert {"**/.env", "**/*.pem", ".venv/"} <= set(ignore)
    for op, args in instructions:
        if op in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", args), args
    install = next(args for op, args in instructions if op == "RUN" and ".[" in args)
    assert "--constraint deploy/docker/constraints.txt" in install
    assert '".[pipelines,s3,slurm,kubernetes]"' in install and "pip check" in install


def test_constraints_pin_what_the_project_requires():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [line for line in (DOCKER / "constraints.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    pins = {}
    for line in lines:
        name, version = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)", line).groups()
        pins[canonicalize_name(name)] = version
    assert len(pins) == len(lines)
    assert "daskgmm" not in pins
    test_only = {"pytest", "pytest-timeout", "ruff", "moto", "hypothesis", "duckdb",
                 "import-linter", "check-jsonschema", "kubernetes-validate"}
    assert not test_only & set(pins)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + [r for extra in ("pipelines", "s3", "slurm",
                                                        "kubernetes") for r in extras[extra]]
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is required but not pinned"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, pyproject requires {text}")
    # the server and flow-run parts the image needs beyond the project's own list
    assert {"asyncpg", "uvicorn", "distributed", "s3fs", "bokeh"} <= set(pins)


def test_compose_job_config():
    from daskgmm_pipelines.config import load_config

    compose = compose_file()
    config = load_config(ROOT / "configs" / "compose.yaml")
    names = [yaml.safe_load(p.read_text())["name"] for p in (ROOT / "configs").glob("*.yaml")]
    assert names.count(config.name) == 1
    scheduler = service_argv(compose["services"]["dask-scheduler"])
    port = scheduler[scheduler.index("--port") + 1]
    assert config.cluster.address == f"tcp://dask-scheduler:{port}"
    assert config.cluster.address in service_argv(compose["services"]["dask-worker-1"])
    options = config.source.storage_options
    assert options["client_kwargs"]["endpoint_url"] == "http://minio:9000"
    assert options["key"] == {"env": "AWS_ACCESS_KEY_ID"}
    environment = compose["services"]["prefect-worker"]["environment"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(environment)
    # the data step writes where the job reads; the deployment runs this job on this pool
    demo = " ".join(service_argv(compose["services"]["demo-data"]))
    assert f"--out {config.source.uri.removesuffix('/demo.zarr')} " in demo
    deployment = yaml.safe_load((DOCKER / "prefect.yaml").read_text())
    for entry in deployment["deployments"]:
        assert entry["parameters"]["config_path"] == "configs/compose.yaml"
        assert entry["work_pool"]["name"] == POOL
        assert (ROOT / entry["entrypoint"].split(":")[0]).exists()
    worker = service_argv(compose["services"]["prefect-worker"])
    assert worker[worker.index("--pool") + 1] == POOL
    assert worker[worker.index("--type") + 1] == "process"


# --- the compose stack, run as processes ----------------------------------------------------

class Stack:
    """The compose stack's services as processes here (see the module's docstring)."""

    def __init__(self, here, processes, compose, config):
        self.here, self.processes, self.compose, self.config = here, processes, compose, config
        self.api = f"http://{here.address('prefect-server:4200')}/api"

    def service(self, name):
        return self.compose["services"][name]

    def start(self, name, **env):
        service = self.service(name)
        return self.processes.start(name, self.here.argv(service_argv(service), name),
                                    env=self.here.env(service, **env), cwd=self.here.cwd(service))

    def run(self, name, **env):
        service = self.service(name)
        return run(self.here.argv(service_argv(service), name),
                   self.here.env(service, **env), self.here.cwd(service))

    def healthy(self, name) -> bool:
        """Whether the healthcheck of service ``name`` passes, run here: its own ports
        (127.0.0.1:PORT in the container) moved like its command's."""
        service = self.service(name)
        kind, *argv = service["healthcheck"]["test"]
        assert kind == "CMD"
        ports = {key.split(":")[1]: port for key, port in self.here.ports.items()
                 if key.startswith(f"{name}:")}
        argv = [self.here.text(re.sub(r"127\.0\.0\.1:(\d+)",
                                      lambda m: f"127.0.0.1:{ports.get(m[1], m[1])}", word))
                for word in argv]
        return subprocess.run(argv, env=self.here.env(service), cwd=self.here.cwd(service),
                              capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="module")
def stack(s3, tmp_path_factory):
    """The compose stack as processes, started in its dependency order: the Prefect
    server (SQLite in place of Postgres; it starts while the rest does), the demo-data step
    on the suite's S3 server, the Dask scheduler and two workers, the Prefect worker and the
    deploy step."""
    from distributed import Client

    fs, options = s3
    tmp = tmp_path_factory.mktemp("compose")
    (tmp / "home").mkdir()
    (tmp / "logs").mkdir()
    here = Here(options["client_kwargs"]["endpoint_url"], tmp / "home")
    compose = compose_file(DEMO_ROWS="4000")
    # the job file as the containers read it, moved here like the commands
    config = tmp / "compose.yaml"
    config.write_text(here.text((ROOT / "configs" / "compose.yaml").read_text()))
    processes = Processes(tmp / "logs")
    stack = Stack(here, processes, compose, config)
    try:
        server = stack.start("prefect-server", PREFECT_API_DATABASE_CONNECTION_URL=(
            f"sqlite+aiosqlite:///{tmp / 'prefect.db'}"))
        stack.demo_data_output = stack.run("demo-data")
        scheduler = stack.start("dask-scheduler")
        wait_until(lambda: stack.healthy("dask-scheduler"), "the Dask scheduler's health",
                   proc=scheduler, log=lambda: processes.log("dask-scheduler", 4000))
        for name in ("dask-worker-1", "dask-worker-2"):
            stack.start(name)
        with Client(f"tcp://{here.address('dask-scheduler:8786')}", timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)

        wait_until(lambda: stack.healthy("prefect-server"), "the Prefect server's health",
                   timeout=240, proc=server, log=lambda: processes.log("prefect-server", 4000))
        # the deploy step waits for a healthy worker: one whose pool exists
        stack.worker_healthy_before = stack.healthy("prefect-worker")
        # polling every second rather than 10 (the only change to a service's settings)
        worker = stack.start("prefect-worker", PREFECT_WORKER_QUERY_SECONDS="1")
        wait_until(lambda: stack.healthy("prefect-worker"), "the Prefect worker's health",
                   proc=worker, log=lambda: processes.log("prefect-worker", 4000))
        stack.deploy_output = stack.run("deploy")
        yield stack
    finally:
        processes.stop()


def test_compose_demo_data_step_writes_to_s3(stack, s3):
    import zarr

    fs, options = s3
    fs.invalidate_cache()
    assert fs.exists("daskgmm/demo-data/demo.zarr/zarr.json"), stack.demo_data_output
    group = zarr.open_group("s3://daskgmm/demo-data/demo.zarr", mode="r",
                            storage_options=options)
    assert group["X"].shape == (4000, 6) and group["labels"].shape == (4000,)
    # a second `docker compose up` keeps the data
    assert "demo data already in s3://daskgmm/demo-data: kept" in stack.run("demo-data")


def test_compose_dask_cluster_fits_the_s3_data(stack, monkeypatch):
    from distributed import Client

    import daskgmm
    from daskgmm_pipelines.config import load_config, resolve_storage_options

    config = load_config(stack.config)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, stack.here.env(stack.service("dask-worker-1"))[name])
    options = resolve_storage_options(config.source.storage_options)
    with Client(config.cluster.address, timeout="30s") as client:
        workers = client.scheduler_info()["workers"].values()
        assert sorted(w["name"] for w in workers) == ["dask-worker-1", "dask-worker-2"]
        assert [w["memory_limit"] for w in workers] == [2 * 2**30] * 2
        assert [w["nthreads"] for w in workers] == [1, 1]
        gm = daskgmm.GaussianMixture(n_components=3, random_state=0, array_name="X",
                                     storage_options=options)
        gm.fit(config.source.uri)
        ran = client.run(lambda dask_worker: len(dask_worker.state.log))
    assert gm.converged_ and gm.means_.shape == (3, 6)
    assert sum(ran.values()) > 0  # the fit ran on the stack's workers


def test_compose_prefect_worker_and_deploy_step(stack):
    assert not stack.worker_healthy_before   # no pool before the worker made it
    pool = get_json(f"{stack.api}/work_pools/{POOL}")
    assert pool["type"] == "process"
    workers = get_json(f"{stack.api}/work_pools/{POOL}/workers/filter", {})
    assert [w["name"] for w in workers] == ["compose-worker"]
    deployment = get_json(f"{stack.api}/deployments/name/daskgmm-nightly/compose-nightly")
    assert deployment, stack.deploy_output
    assert deployment["work_pool_name"] == POOL
    assert deployment["parameters"] == {"config_path": "configs/compose.yaml"}
    assert deployment["job_variables"]["env"]["DASKGMM_FLOW_TIMEOUT_SECONDS"] == "3600"
    assert deployment["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {
        "directory": str(ROOT)}}]
    assert get_json(f"{stack.api}/deployments/name/daskgmm-score/compose-score")


def test_kubernetes_deployment_file_deploys(stack):
    """deploy/kubernetes/prefect.yaml deploys as its README says, on the stack's server
    (its pool made here as the Kubernetes worker would make it)."""
    assert get_json(f"{stack.api}/work_pools/", {"name": "daskgmm-kubernetes",
                                                  "type": "process"})
    (command,) = [line.strip() for line in (KUBERNETES / "README.md").read_text().splitlines()
                  if line.strip().startswith("prefect --no-prompt deploy")]
    assert command.endswith("--prefect-file deploy/kubernetes/prefect.yaml")
    run(shlex.split(command), stack.here.env(stack.service("deploy")), str(ROOT))
    deployment = get_json(f"{stack.api}/deployments/name/daskgmm-nightly/kubernetes-nightly")
    assert deployment["work_pool_name"] == "daskgmm-kubernetes"
    assert deployment["parameters"] == {"config_path": "configs/kubernetes.yaml"}
    assert deployment["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {
        "directory": "/opt/daskgmm"}}]


def readme_commands(prefix="docker compose exec prefect-worker "):
    """The README's commands run in the prefect-worker container, as argv lists."""
    text = (DOCKER / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    return [shlex.split(line.removeprefix(prefix)) for block in blocks
            for line in block.splitlines() if line.startswith(prefix)]


def test_compose_nightly_runs_and_the_readme_reads_its_scores(stack):
    """The README's commands in the prefect-worker container: run the nightly deployment
    (with the job file moved here) and read the model store and the scores it wrote."""
    service = stack.service("prefect-worker")
    env, cwd = stack.here.env(service), stack.here.cwd(service)
    commands = readme_commands()
    assert [argv[:3] for argv in commands] == [
        ["prefect", "deployment", "run"], ["daskgmm", "inspect", "s3://daskgmm/models/compose-demo"],
        ["python", "-c", commands[2][2]], ["python", "-c", commands[3][2]]]
    trigger = commands[0]
    assert trigger[3:] == ["daskgmm-nightly/compose-nightly", "--watch"]
    # (a failed run would wait 10 minutes for its retry: --watch gives up before)
    out = run([*trigger, "--param", f"config_path={stack.config}", "--watch-timeout", "300"],
              env, cwd, timeout=360)
    assert "Flow run finished successfully in 'Completed'" in out, out

    out = run(commands[1], env, cwd)
    assert "model store s3://daskgmm/models/compose-demo: 1 version(s)" in out, out
    assert "(current)" in out and "threshold" in out, out
    out = run(commands[2], env, cwd)
    assert "[4000 rows x 6 columns]" in out and "is_anomaly" in out, out
    anomalies = run(commands[3], env, cwd)
    count = re.search(r"^(\d+) anomalies in 4000 rows$", anomalies, re.MULTILINE)
    assert count and 0 < int(count[1]) < 100, anomalies   # about 0.5% of the rows


def test_compose_prefect_server_command(monkeypatch):
    """The prefect-server service's command names options the installed Prefect has, its
    settings are Prefect's, and its database URL is one Prefect's server can open
    (Postgres through asyncpg)."""
    import sqlalchemy
    from prefect.settings import Settings

    service = compose_file()["services"]["prefect-server"]
    argv = service_argv(service)
    assert argv[:3] == ["prefect", "server", "start"]
    done = subprocess.run([str(BIN / "prefect"), *argv[1:3], "--help"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    for option in (word for word in argv if word.startswith("--")):
        assert re.search(rf"{option}\b", done.stdout), f"prefect server start has no {option}"
    url = sqlalchemy.engine.make_url(service["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert (url.drivername, url.host, url.port) == ("postgresql+asyncpg", "postgres", 5432)
    assert url.password == read_env_file(DOCKER / "example.env")["POSTGRES_PASSWORD"]
    import asyncpg  # noqa: F401  (the driver is in the image: constraints.txt pins it)

    # Prefect ignores a PREFECT_ variable it does not know: these are read as meant
    for key, value in {**service["environment"], **dockerfile_env()}.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.server.database.connection_url.get_secret_value() == str(
        url.render_as_string(hide_password=False))
    assert settings.server.ui.api_url == "http://localhost:4200/api"
    assert settings.server.analytics_enabled is False
    assert sorted(settings.logging.extra_loggers) == ["daskgmm", "daskgmm_pipelines"]
    assert str(settings.home) == "/home/daskgmm/.prefect"


# --- Kubernetes -----------------------------------------------------------------------------

KUBERNETES_VERSION = "1.30.0"   # the oldest minor version the recipe supports


def manifests(name) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]


def read_yaml(path):
    """A YAML file, read by libyaml when PyYAML has it (the CRD is 280 kB)."""
    return yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.cache
def crd_validator(crd_path=SCHEMAS / "daskcluster-crd.yaml"):
    """A JSON-schema validator of the DaskCluster CRD's openAPIV3Schema (version v1), made
    strict as ``kubectl apply --validate=strict`` is: a field the schema does not declare
    is an error (the API server would drop it silently)."""
    import copy

    import jsonschema

    crd = read_yaml(crd_path)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])

    def strict(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                strict(value)
        elif isinstance(node, list):
            for value in node:
                strict(value)

    strict(schema)
    # what every object has besides its schema's fields
    schema["properties"].update({"apiVersion": {"enum": ["kubernetes.dask.org/v1"]},
                                 "kind": {"enum": [crd["spec"]["names"]["kind"]]},
                                 "metadata": {"type": "object"}})
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
    return jsonschema.Draft7Validator(schema)


def crd_errors(resource) -> list[str]:
    """What the API server would refuse in ``resource``; null values are dropped first,
    as it drops them (fields not marked nullable)."""
    def pruned(node):
        if isinstance(node, dict):
            return {k: pruned(v) for k, v in node.items() if v is not None}
        if isinstance(node, list):
            return [pruned(v) for v in node]
        return node

    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in crd_validator().iter_errors(pruned(resource))]


def test_vendored_crd_matches_the_installed_operator():
    """tests/schemas/daskcluster-crd.yaml is the resolved form of the CRD templates the
    installed dask-kubernetes ships (same group, kind, version, and spec fields)."""
    import dask_kubernetes.operator

    package = Path(dask_kubernetes.operator.__file__).parent / "customresources"
    installed = yaml.safe_load((package / "daskcluster.yaml").read_text())
    vendored = read_yaml(SCHEMAS / "daskcluster-crd.yaml")
    for key in ("group", "names", "scope"):
        assert vendored["spec"][key] == installed["spec"][key]
    assert [v["name"] for v in vendored["spec"]["versions"]] == [
        v["name"] for v in installed["spec"]["versions"]] == ["v1"]
    templates = yaml.safe_load((package / "templates.yaml").read_text())["definitions"]
    spec = templates["dask.k8s.api.v1.DaskCluster"]["properties"]["spec"]
    resolved = vendored["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    assert set(resolved["spec"]["properties"]) == set(spec["properties"])
    assert resolved["spec"]["required"] == spec["required"]
    for part in ("scheduler", "worker"):
        template = templates[f"dask.k8s.api.v1.Dask{part.title()}"]
        assert set(resolved["spec"]["properties"][part]["properties"]) == set(
            template["properties"])


def test_daskcluster_manifest_is_valid_for_the_operator():
    (cluster,) = manifests("daskcluster.yaml")
    assert crd_errors(cluster) == []
    # the validator has teeth: a misspelt field, a wrong type, a missing part
    bad = json.loads(json.dumps(cluster))
    bad["spec"]["worker"]["replica"] = bad["spec"]["worker"].pop("replicas")
    bad["spec"]["scheduler"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8786"
    del bad["spec"]["scheduler"]["service"]
    errors = crd_errors(bad)
    assert any("'replica' was unexpected" in e for e in errors), errors
    assert any("containerPort: '8786' is not of type 'integer'" in e for e in errors), errors
    assert any("'service' is a required property" in e for e in errors), errors
    # the workers' S3 keys come from a Secret, never inline
    (worker,) = cluster["spec"]["worker"]["spec"]["containers"]
    assert all("valueFrom" in variable for variable in worker["env"])


def test_kubernetes_core_resources_are_valid():
    import kubernetes_validate

    resources = manifests("prefect-worker.yaml")
    assert [r["kind"] for r in resources] == ["ServiceAccount", "Role", "RoleBinding",
                                              "Deployment"]
    for resource in resources:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    deployment = resources[-1]
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["workingdir"] = "/opt/daskgmm"
    with pytest.raises(kubernetes_validate.ValidationError, match="workingdir"):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)

    # the pieces refer to each other, and to the DaskCluster's namespace
    account, role, binding, deployment = resources
    (cluster,) = manifests("daskcluster.yaml")
    namespace = cluster["metadata"]["namespace"]
    assert {r["metadata"]["namespace"] for r in resources} == {namespace}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": namespace,
                                    "name": account["metadata"]["name"]}]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    granted = {(group, resource, verb) for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    for verb in ("get", "list", "watch", "patch", "create", "delete"):
        assert ("kubernetes.dask.org", "daskclusters", verb) in granted
    (container,) = pod["containers"]
    assert container["image"] == cluster["spec"]["worker"]["spec"]["containers"][0]["image"]
    args = container["args"]
    deployment_file = yaml.safe_load((KUBERNETES / "prefect.yaml").read_text())
    (entry,) = deployment_file["deployments"]
    assert args[:3] == ["prefect", "worker", "start"]
    assert args[args.index("--pool") + 1] == entry["work_pool"]["name"]
    assert entry["parameters"] == {"config_path": "configs/kubernetes.yaml"}
    names = {variable["name"] for variable in container["env"]}
    assert {"PREFECT_API_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names
    for variable in container["env"]:
        if re.search("KEY|SECRET|TOKEN|PASSWORD", variable["name"]):
            assert "valueFrom" in variable and "value" not in variable


def test_kubernetes_job_config(tmp_path):
    """configs/kubernetes.yaml loads and names the manifest's DaskCluster; the same
    section with existing: false and the manifest's image, workers, resources and S3
    Secret makes (through dask-kubernetes' make_cluster_spec, which KubeCluster uses) a
    DaskCluster the operator accepts."""
    from dask_kubernetes.operator import make_cluster_spec

    from daskgmm_pipelines.config import load_config

    path = ROOT / "configs" / "kubernetes.yaml"
    config = load_config(path)
    names = [yaml.safe_load(p.read_text())["name"] for p in (ROOT / "configs").glob("*.yaml")]
    assert names.count(config.name) == 1
    assert config.source.uri.startswith("s3://")
    assert config.cluster.backend == "kubernetes"
    kube = config.cluster.kubernetes
    (cluster,) = manifests("daskcluster.yaml")
    assert kube.existing
    assert (kube.name, kube.namespace) == (cluster["metadata"]["name"],
                                           cluster["metadata"]["namespace"])

    (worker,) = cluster["spec"]["worker"]["spec"]["containers"]
    data = yaml.safe_load(path.read_text())
    data["cluster"]["kubernetes"].update(
        existing=False, image=worker["image"], n_workers=cluster["spec"]["worker"]["replicas"],
        resources=worker["resources"],
        env={v["name"]: {"secret": v["valueFrom"]["secretKeyRef"]["name"],
                         "key": v["valueFrom"]["secretKeyRef"]["key"]} for v in worker["env"]})
    (tmp_path / "created.yaml").write_text(yaml.safe_dump(data))
    created = load_config(tmp_path / "created.yaml").cluster.kubernetes
    env = [{"name": name, "valueFrom": {"secretKeyRef": {"name": value.secret,
                                                         "key": value.key}}}
           for name, value in created.env.items()]
    spec = make_cluster_spec(name=created.name, image=created.image,
                             n_workers=created.n_workers, resources=dict(created.resources),
                             env=env)
    assert crd_errors(spec) == []
    assert spec["spec"]["worker"]["replicas"] == cluster["spec"]["worker"]["replicas"]
    made = spec["spec"]["worker"]["spec"]["containers"][0]
    assert (made["image"], made["env"], made["resources"]) == (
        worker["image"], worker["env"], worker["resources"])
    # the config's defaults make a valid one too
    default = load_config(_with_kubernetes(tmp_path, path, {"name": "daskgmm"}))
    kube = default.cluster.kubernetes
    assert crd_errors(make_cluster_spec(name=kube.name, image=kube.image,
                                        n_workers=kube.n_workers,
                                        resources=dict(kube.resources), env=[])) == []


def _with_kubernetes(tmp_path, path, section):
    data = yaml.safe_load(path.read_text())
    data["cluster"]["kubernetes"] = section
    (tmp_path / "default.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "default.yaml"
