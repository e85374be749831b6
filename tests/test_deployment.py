"""The deployment files agree with the code: Dockerfile, docker-compose.yml, .env.template,
.dockerignore, the CI workflow, docs/OPERATIONS.md and the model bake step.

No Docker engine is needed: the files are parsed and checked against the project itself (the
settings `config.py` reads, `main.py`'s real argument parser, the modules the face loader
imports, the schema). The bake step runs for real: insightface's own downloader fetches a
buffalo_l.zip of stand-in ONNX models from a local server, and the app's FaceProcessor loads them.
"""

from __future__ import annotations

import ast
import http.server
import importlib.util
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

import config
import main

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DAEMON_SERVICES = ("app", "dashboard", "worker")  # run the Python app: they read config.py's settings
CONFIG_VARS = set(config.env_var_names())
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
# Read by docker compose itself, not interpolated into the file.
COMPOSE_OWN_VARS = {"COMPOSE_PROFILES"}
SECRETS = {"TG_API_ID", "TG_API_HASH", "POSTGRES_PASSWORD", "DASHBOARD_PASSWORD", "GITHUB_TOKEN"}


# --- helpers -----------------------------------------------------------------------------------


def strings(node) -> list[str]:
    """Every string value in a parsed YAML tree."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return []


def interpolated(node) -> dict[str, set[str]]:
    """{variable: {its defaults}} for every ${VAR}, ${VAR:-default}, ${VAR:?message} in `node`."""
    found: dict[str, set[str]] = {}
    for text in strings(node):
        for name, operator, default in INTERPOLATION.findall(text):
            found.setdefault(name, set())
            if operator in (":-", "-") and default:
                found[name].add(default)
    return found


def template_vars() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.template").read_text().splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            assert match.group(1) not in values, f"{match.group(1)} twice in .env.template"
            values[match.group(1)] = match.group(2)
    return values


def environment(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in (SERVICES[service].get("environment") or {}).items()}


def mounts(service: str) -> dict[str, str]:
    """{source: target} of a service's volumes."""
    result = {}
    for entry in SERVICES[service].get("volumes", []):
        source, target = entry.split(":")[:2]
        result[source] = target
    return result


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def parse_main(argv: list[str]):
    """`main.py`'s own parser; SystemExit (bad arguments) fails the test."""
    return main.build_parser().parse_args(argv)


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    name = None
    for keyword, args in dockerfile():
        if keyword == "FROM":
            name = args.split(" AS ")[-1].strip() if " AS " in args else args
            result[name] = []
        elif name is not None:
            result[name].append((keyword, args))
    return result


def copies(stage: str) -> list[tuple[list[str], str, dict[str, str]]]:
    """(sources, destination, flags) of a stage's COPY instructions."""
    result = []
    for keyword, args in stages()[stage]:
        if keyword != "COPY":
            continue
        words = shlex.split(args)
        flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
        paths = [w for w in words if not w.startswith("--")]
        result.append((paths[:-1], paths[-1], flags))
    return result


def env_of(stage: str) -> dict[str, str]:
    result = {}
    for keyword, args in stages()[stage]:
        if keyword == "ENV":
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                result[name] = value
    return result


def local_imports(path: Path, seen: set[Path] | None = None) -> set[Path]:
    """The project modules `path` imports, directly or not (imports inside functions too: the
    face loader imports lazily)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            module = ROOT / f"{name.split('.')[0]}.py"
            if module.exists() and module not in seen:
                seen.add(module)
                local_imports(module, seen)
    return seen


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative, with /) out of the build context: a pattern
    matches the path or one of its parent directories; later patterns win; ! re-includes."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = re.escape(pattern.lstrip("!").rstrip("/"))
        regex = regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


# --- docker-compose.yml ------------------------------------------------------------------------


def test_compose_file_is_current_syntax_with_the_expected_services():
    assert "version" not in COMPOSE  # obsolete; compose warns about it
    assert set(SERVICES) == {"postgres", "app", "dashboard", "worker", "updater"}
    assert SERVICES["worker"]["profiles"] == ["workers"]
    assert SERVICES["updater"]["profiles"] == ["updater"]
    for name in ("postgres", "app", "dashboard"):
        assert "profiles" not in SERVICES[name], f"{name} must start with a plain `docker compose up`"


def test_every_setting_the_code_reads_is_passed_and_nothing_else():
    passed = {name for service in (*DAEMON_SERVICES, "updater") for name in environment(service)}
    script = (ROOT / "update_checker.sh").read_text()
    for service in DAEMON_SERVICES:
        unknown = set(environment(service)) - CONFIG_VARS
        assert not unknown, f"{service} gets variables config.py does not read: {unknown}"
    for name in environment("updater"):
        assert name in CONFIG_VARS or re.search(r"\$\{" + name + r"[:}]", script), \
            f"the updater gets {name}, which neither config.py nor update_checker.sh reads"
    assert CONFIG_VARS - passed == set(), "settings config.py reads that compose never passes"


def test_each_variable_is_wired_to_itself():
    # `TG_API_HASH: ${TG_API_ID}` would parse fine and break quietly.
    allowed = {("APP_IMAGE", "FACE_ARCHIVER_IMAGE")}
    for service in SERVICES:
        for name, value in environment(service).items():
            for source, _, _ in INTERPOLATION.findall(value):
                assert source == name or (name, source) in allowed, f"{service}: {name}: {value}"


def test_env_template_lists_every_setting_and_every_compose_variable():
    template = set(template_vars())
    compose_vars = set(interpolated(COMPOSE))
    assert CONFIG_VARS - template == set(), "settings missing from .env.template"
    assert compose_vars - template == set(), "compose variables missing from .env.template"
    extra = template - CONFIG_VARS - compose_vars - COMPOSE_OWN_VARS
    assert extra == set(), f".env.template has variables nothing reads: {extra}"
    # Compose-only variables are in their own, labelled section.
    text = (ROOT / ".env.template").read_text()
    section = text.split("# Docker Compose only")[1].split("# =====")[1]
    for name in template - CONFIG_VARS:
        assert re.search(rf"^{name}=", section, re.M), f"{name} is compose-only: put it in that section"


def test_env_template_is_valid_as_it_is_and_holds_the_defaults(clean_env):
    settings = config.load_settings(ROOT / ".env.template")
    for name, field in config.Settings.model_fields.items():
        assert getattr(settings, name) == field.default, \
            f"{name.upper()} in .env.template differs from config.py's default {field.default!r}"


def test_env_template_holds_no_secret_values():
    values = template_vars()
    for name in SECRETS | {"HUB_GROUP_ID", "GITHUB_REPO"}:
        assert values[name] == "", f"{name} must be empty in the template"
    for value in values.values():
        assert value.strip().lower() not in config.PLACEHOLDERS


def test_compose_defaults_match_config_defaults():
    for name, defaults in interpolated(COMPOSE).items():
        if name in CONFIG_VARS:
            expected = str(config.Settings.model_fields[name.lower()].default)
            for default in defaults:
                assert default == expected, f"${{{name}:-{default}}} but config.py says {expected}"


def test_passwords_are_required_and_secrets_reach_only_who_needs_them():
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD:?" in text and "${DASHBOARD_PASSWORD:?" in text
    assert "TG_API_HASH" not in environment("dashboard") and "TG_API_HASH" not in environment("worker")
    assert "GITHUB_TOKEN" not in environment("app")
    assert "DASHBOARD_PASSWORD" in environment("dashboard")
    # The dashboard's own database role: required; the app sets it on the role, the dashboard logs
    # in with it and never holds the owner's password.
    assert "${DASHBOARD_DB_PASSWORD:?" in text and "DASHBOARD_DB_PASSWORD" in environment("dashboard")
    assert "DASHBOARD_DB_PASSWORD" in environment("app") and "DASHBOARD_DB_PASSWORD" not in environment("worker")
    assert "POSTGRES_PASSWORD" not in environment("dashboard")
    assert "NOTIFY_WEBHOOK_URL" in environment("app") and "NOTIFY_WEBHOOK_URL" not in environment("dashboard")


def test_nothing_but_the_dashboard_is_published_and_that_on_localhost():
    for name, service in SERVICES.items():
        if name != "dashboard":
            assert "ports" not in service, f"{name} publishes ports"
    (port,) = SERVICES["dashboard"]["ports"]
    assert port.startswith("${DASHBOARD_BIND:-127.0.0.1}:")
    assert template_vars()["DASHBOARD_BIND"] == "127.0.0.1"


def test_session_files_reach_the_app_only_and_the_docker_socket_the_updater_only():
    for name in SERVICES:
        assert ("sessions" in mounts(name)) == (name == "app"), name
        assert ("/var/run/docker.sock" in mounts(name)) == (name == "updater"), name


def test_volume_paths_agree_with_the_settings_and_the_image():
    image_env = env_of("runtime")
    app, worker, updater = environment("app"), environment("worker"), environment("updater")
    assert app["SESSIONS_DIR"] == mounts("app")["sessions"] == image_env["SESSIONS_DIR"]
    assert app["STAGING_DIR"] == mounts("app")["staging"] == image_env["STAGING_DIR"]
    assert worker["STAGING_DIR"] == mounts("worker")["staging"] == app["STAGING_DIR"]
    assert str(Path(app["UPDATE_FLAG_FILE"]).parent) == mounts("app")["update_flag"]
    assert app["UPDATE_FLAG_FILE"] == image_env["UPDATE_FLAG_FILE"]
    assert str(Path(updater["UPDATE_FLAG_FILE"]).parent) == mounts("updater")["update_flag"]
    for name in DAEMON_SERVICES:
        assert environment(name)["MODELS_DIR"] == image_env["MODELS_DIR"]
    declared = set(COMPOSE["volumes"])
    for name in SERVICES:
        named = {source for source in mounts(name) if not source.startswith((".", "/"))}
        assert named <= declared, f"{name} mounts undeclared volumes {named - declared}"


def test_postgres_is_pinned_initialised_from_init_db_sql_and_checked_over_tcp():
    postgres = SERVICES["postgres"]
    assert re.fullmatch(r"pgvector/pgvector:\d+\.\d+\.\d+-pg\d+(-[a-z]+)?", postgres["image"])
    assert mounts("postgres")["./init-db.sql"].startswith("/docker-entrypoint-initdb.d/")
    assert (ROOT / "init-db.sql").is_file()
    assert "-h 127.0.0.1" in " ".join(postgres["healthcheck"]["test"])


def test_start_order_health_checks_and_limits():
    for name in DAEMON_SERVICES:
        assert SERVICES[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("postgres", *DAEMON_SERVICES):
        assert SERVICES[name]["healthcheck"]["test"], name
    for name, service in SERVICES.items():
        assert service["restart"] == "unless-stopped", name
        assert service["deploy"]["resources"]["limits"]["memory"], name
        assert service["logging"]["options"]["max-size"], name


def test_daemons_get_longer_than_their_shutdown_to_stop():
    tuning = main.Tuning()
    for name in ("app", "worker"):
        grace = seconds(SERVICES[name]["stop_grace_period"])
        assert grace >= tuning.stop_deadline + 10, f"{name}: {grace} s leaves no margin"


def test_docker_stop_while_the_daemon_waits_for_its_database_is_a_clean_stop(tmp_path):
    """`docker compose stop` while `db` is not up yet: the daemon, still waiting for its database
    (before the event loop's handlers exist), stops at once with exit 0, not killed by SIGTERM."""
    import socket
    with socket.socket() as probe:   # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "XDG_RUNTIME_DIR"}}
    env |= {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(port), "POSTGRES_PASSWORD": "x",
            "DATA_DIR": str(tmp_path / "data"), "FACE_ENGINE": "dlib"}
    daemon = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--env-file", str(tmp_path / "none.env"), "run"],
                              cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        said = ""
        while "the database cannot be reached yet" not in said:
            line = daemon.stderr.readline()
            assert line, f"exited early ({daemon.poll()}): {said}"
            said += line
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=10)
        said += daemon.stderr.read()
    finally:
        daemon.kill()
    assert code == 0, said
    assert "stopped before starting (received SIGTERM)" in said and "Traceback" not in said


def test_service_commands_are_real_commands_of_the_project():
    image = SERVICES["app"]["image"]
    assert SERVICES["dashboard"]["image"] == SERVICES["worker"]["image"] == image
    for name, role in (("app", "all"), ("worker", "worker")):
        command = SERVICES[name]["command"]
        assert command[:2] == ["python", "main.py"]
        args = parse_main(command[2:])
        assert (args.command, args.role) == ("run", role)
        health = SERVICES[name]["healthcheck"]["test"]
        assert health[:3] == ["CMD", "python", "main.py"] and parse_main(health[3:]).command == "health"
    dashboard = SERVICES["dashboard"]["command"]
    assert dashboard[:3] == ["streamlit", "run", "dashboard.py"]
    assert (ROOT / "dashboard.py").is_file()
    assert "--server.address=0.0.0.0" in dashboard and "--server.port=8501" in dashboard
    assert SERVICES["dashboard"]["ports"][0].endswith(":8501")
    assert "8501/_stcore/health" in " ".join(SERVICES["dashboard"]["healthcheck"]["test"])


def test_build_targets_exist_and_the_updater_runs_the_checked_script():
    names = set(stages())
    for name, service in SERVICES.items():
        if "build" in service:
            assert service["build"]["target"] in names, name
    assert list(stages())[-1] == "runtime"  # `docker build .` gives the app image
    updater = stages()["updater"]
    assert ("ENTRYPOINT", '["/usr/local/bin/update_checker.sh"]') in updater
    assert (["update_checker.sh"], "/usr/local/bin/update_checker.sh") in [(s, d) for s, d, _ in copies("updater")]
    assert SERVICES["updater"]["working_dir"] == mounts("updater")["./"]


# --- Dockerfile --------------------------------------------------------------------------------


def test_base_images_are_pinned():
    for keyword, args in dockerfile():
        if keyword == "ARG" and args.startswith("PYTHON_IMAGE="):
            assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", args)
        if keyword == "FROM":
            image = args.split(" AS ")[0]
            assert image in {"${PYTHON_IMAGE}", "builder"} or re.fullmatch(r"docker:\d+\.\d+\.\d+-cli", image), image


def test_copied_files_exist_and_requirements_are_installed_as_the_makefile_does():
    for stage in stages():
        for sources, _, flags in copies(stage):
            if "from" not in flags:
                for source in sources:
                    assert (ROOT / source).exists(), f"{stage}: COPY {source}: no such file"
    builder = " ".join(args for keyword, args in stages()["builder"] if keyword == "RUN")
    assert "pip install -r requirements.txt" in builder
    assert "pip install --no-deps -r requirements-insightface.txt" in builder


def test_model_bake_step_runs_the_apps_loader_with_everything_it_imports():
    models = stages()["models"]
    copied = {ROOT / s for sources, _, _ in copies("models") for s in sources}
    bake = ROOT / "docker" / "bake_models.py"
    assert bake in copied
    missing = local_imports(bake) - copied
    assert not missing, f"the models stage must COPY {sorted(p.name for p in missing)}"
    run = " ".join(args for keyword, args in models if keyword == "RUN")
    target = re.search(r"docker/bake_models\.py ([^\s;]+)", run).group(1)
    (models_copy,) = [(s, d) for s, d, f in copies("runtime") if f.get("from") == "models"]
    assert models_copy == ([target], env_of("runtime")["MODELS_DIR"])
    source = bake.read_text()
    assert "FaceProcessor(\"insightface\", models_dir=" in source
    assert "download_insightface_models(" in source


def test_runtime_image_runs_the_daemon_as_a_non_root_user_under_tini():
    runtime = stages()["runtime"]
    (user,) = [args for keyword, args in runtime if keyword == "USER"]
    assert user not in {"root", "0"}
    (entrypoint,) = [json.loads(args) for keyword, args in runtime if keyword == "ENTRYPOINT"]
    assert entrypoint == ["tini", "--"]
    (cmd,) = [json.loads(args) for keyword, args in runtime if keyword == "CMD"]
    assert cmd[:2] == ["python", "main.py"] and parse_main(cmd[2:]).command == "run"
    (health,) = [args for keyword, args in runtime if keyword == "HEALTHCHECK"]
    health_cmd = json.loads(health.split(" CMD ", 1)[1])
    assert health_cmd[:2] == ["python", "main.py"] and parse_main(health_cmd[2:]).command == "health"
    for name in env_of("runtime"):
        assert name in CONFIG_VARS or name in {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}, name


def test_dockerignore_keeps_secrets_and_state_out_and_the_app_in():
    kept_out = [".env", ".env.local", "sessions/1.session", "+15551234567.session", "x.session-journal",
                "data/postgres/PG_VERSION", "data/heartbeat", "update_flag/update_available",
                ".git/HEAD", ".venv/bin/python", "tests/conftest.py", "test-artifacts/a.png",
                "__pycache__/main.cpython-311.pyc", "dashboard_pages/__pycache__/app.cpython-311.pyc",
                ".streamlit/secrets.toml", "backups/face_archiver-2026-01-31.dump"]
    for path in kept_out:
        assert dockerignored(path), f"{path} would be copied into the image"
    needed = [p.relative_to(ROOT).as_posix() for pattern in
              ("*.py", "dashboard_pages/*.py", "migrations/*.sql", "sql/*.sql", "docker/*.py",
               "requirements*.txt", "init-db.sql", "update_checker.sh", ".streamlit/config.toml")
              for p in ROOT.glob(pattern)]
    assert "main.py" in needed and "migrations/0001_seed_schema.sql" in needed
    for path in needed:
        assert not dockerignored(path), f"{path} is needed in the image but .dockerignore drops it"


# --- the model bake step, for real ------------------------------------------------------------


def load_bake_models():
    spec = importlib.util.spec_from_file_location("bake_models", ROOT / "docker" / "bake_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stand_in_pack(tmp_path_factory) -> Path:
    """buffalo_l's layout with stand-in models: the detector and embedder the app loads (see
    test_faces_insightface.py) and two extra files the pack also ships."""
    from test_faces_insightface import stand_in_detector, stand_in_embedder

    pack = tmp_path_factory.mktemp("pack")
    stand_in_detector(pack / "det_10g.onnx")
    stand_in_embedder(pack / "w600k_r50.onnx")
    # Not valid models: if they were left in place, FaceAnalysis would try to load them and fail.
    (pack / "1k3d68.onnx").write_bytes(b"landmark model stand-in")
    (pack / "genderage.onnx").write_bytes(b"age model stand-in")
    return pack


@pytest.fixture
def model_zoo(stand_in_pack, monkeypatch):
    """insightface's model zoo on 127.0.0.1: serves buffalo_l.zip; records the requests."""
    import insightface.utils.storage

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(stand_in_pack.iterdir()):
            zf.write(path, path.name)
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            requests.append(self.path)
            found = self.path == "/model-zoo/buffalo_l.zip"
            body = archive.getvalue() if found else b"not found"
            self.send_response(200 if found else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/model-zoo/"
    monkeypatch.setattr(insightface.utils.storage, "MODEL_ZOO_RELEASE_DOWNLOAD_URL", url)
    yield requests
    server.shutdown()
    server.server_close()


def test_bake_downloads_with_insightface_keeps_what_the_app_loads_and_runs_it(tmp_path, model_zoo, capsys):
    bake = load_bake_models()
    models_dir = tmp_path / "models"
    assert bake.main([str(models_dir)]) == 0
    assert model_zoo == ["/model-zoo/buffalo_l.zip"]
    pack = models_dir / "models" / "buffalo_l"
    assert sorted(p.name for p in pack.iterdir()) == ["det_10g.onnx", "w600k_r50.onnx"]
    assert not (models_dir / "models" / "buffalo_l.zip").exists()
    out = capsys.readouterr().out
    assert "FaceProcessor('insightface') loaded and ran: 1 face(s)" in out  # the stand-in always finds one
    assert "removed 1k3d68.onnx, genderage.onnx, buffalo_l.zip" in out

    # Built again (a cached layer gone): nothing is fetched twice.
    assert bake.main([str(models_dir)]) == 0
    assert model_zoo == ["/model-zoo/buffalo_l.zip"]


def test_bake_fails_the_build_when_the_download_fails(tmp_path, model_zoo, monkeypatch, capsys):
    import insightface.utils.storage

    monkeypatch.setattr(insightface.utils.storage, "MODEL_ZOO_RELEASE_DOWNLOAD_URL",
                        insightface.utils.storage.MODEL_ZOO_RELEASE_DOWNLOAD_URL + "missing/")
    assert load_bake_models().main([str(tmp_path / "models")]) == 1
    assert "could not download InsightFace 'buffalo_l'" in capsys.readouterr().err


def test_bake_runs_as_the_dockerfile_runs_it(tmp_path, stand_in_pack):
    # The models stage: PYTHONPATH=/src python docker/bake_models.py /opt/models, here with the
    # pack already in place (no download) and --keep-all.
    pack = tmp_path / "models" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    for name in ("det_10g.onnx", "w600k_r50.onnx"):
        (pack / name).write_bytes((stand_in_pack / name).read_bytes())
    result = subprocess.run([sys.executable, "docker/bake_models.py", str(tmp_path / "models"), "--keep-all"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "loaded and ran" in result.stdout


# --- CI ----------------------------------------------------------------------------------------


def test_ci_runs_the_tests_on_every_push_and_publishes_the_image_from_main():
    workflows = list((ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows
    (workflow,) = [yaml.safe_load(p.read_text()) for p in workflows if "image" in yaml.safe_load(p.read_text())["jobs"]]
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "push" in triggers
    test_job, image_job = workflow["jobs"]["test"], workflow["jobs"]["image"]
    assert any(step.get("run", "").strip() == "bash .ci/run" for step in test_job["steps"])
    assert image_job["needs"] == "test"
    assert "refs/heads/main" in image_job["if"]
    assert image_job["permissions"]["packages"] == "write"
    build = [s for s in image_job["steps"] if s.get("uses", "").startswith("docker/build-push-action@")]
    assert build and build[0]["with"]["push"] is True and build[0]["with"]["target"] == "runtime"
    assert "labels" in build[0]["with"]  # org.opencontainers.image.revision, which the updater checks
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]


# --- docs/OPERATIONS.md ------------------------------------------------------------------------

OPERATIONS = (ROOT / "docs" / "OPERATIONS.md").read_text()


def test_operations_guide_uses_compose_v2_and_real_services():
    assert not re.search(r"docker-compose\s", OPERATIONS), "use `docker compose`, not `docker-compose`"
    pattern = (r"docker compose (?:exec(?: -T)?|run --rm(?: -v \S+)?|restart|stop|start|"
               r"logs(?: -f| --since \S+)?|up -d) ([a-z_]+)")
    named = set(re.findall(pattern, OPERATIONS))
    assert {"app", "postgres", "dashboard"} <= named
    assert named <= set(SERVICES), f"unknown services in the guide: {named - set(SERVICES)}"
    volumes = set(re.findall(COMPOSE["name"] + r"_(\w+)", OPERATIONS))
    assert volumes and volumes <= set(COMPOSE["volumes"])


def test_operations_guide_commands_parse_with_main_py():
    commands = re.findall(r"python main\.py((?: [\w/.=-]+)*)", OPERATIONS)
    assert len(commands) >= 5
    for command in commands:
        parse_main(command.split())


def test_operations_guide_sql_names_exist_in_the_schema():
    schema = (ROOT / "init-db.sql").read_text()
    tables = set(re.findall(r"CREATE TABLE (\w+)", schema))
    for table in re.findall(r"\bFROM (\w+)", OPERATIONS):
        assert table in tables, f"no table {table}"
    for name in ("idx_embeddings_vector", "cleanup_old_metrics", "update_topic_stats"):
        assert name in OPERATIONS and name in schema
