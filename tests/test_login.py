"""Credentials without a secret on any command line (issue 9): ``fsnap login``/``logout``
with docker's config.json and the ``docker-credential-*`` helper protocol,
``--password-stdin``, ``FSNAP_USERNAME``/``FSNAP_PASSWORD``.

Everything runs the real ``fsnap`` program against the real registries of conftest; the
credential helper is a real executable the test writes onto PATH.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_server import FaultServer, run_fault_server
from support.cli import FSNAP, fsnap
from support.registry import RegistryProcess
from support.remotes import small_image

from fsnap.cli.registry_options import PASSWORD_ENV, USER_ENV

PASSWORD = "wonderland"

HELPER = """#!{python}
# docker-credential-fsnaptest: the credential helper protocol, kept in a JSON file.
import json, os, sys
store, log = os.environ["FSNAPTEST_STORE"], os.environ["FSNAPTEST_LOG"]
action = sys.argv[1]
with open(log, "a") as f:
    f.write(action + "\\n")
data = json.load(open(store)) if os.path.exists(store) else {{}}
given = sys.stdin.read()
if action == "store":
    entry = json.loads(given)
    data[entry["ServerURL"]] = entry
elif action == "get":
    if given.strip() not in data:
        print("credentials not found in native keychain")
        sys.exit(1)
    json.dump(data[given.strip()], sys.stdout)
elif action == "erase":
    data.pop(given.strip(), None)
json.dump(data, open(store, "w"))
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with a docker config directory of the test's own, a store root, and
    no fsnap credentials inherited."""
    clean = {k: v for k, v in os.environ.items() if k not in (USER_ENV, PASSWORD_ENV)}
    clean["DOCKER_CONFIG"] = str(tmp_path / "docker")
    clean["FSNAP_ROOT"] = str(tmp_path / "root")
    return clean


def config_of(env: dict[str, str]) -> Path:
    return Path(env["DOCKER_CONFIG"]) / "config.json"


@pytest.fixture
def image_ref(basic_registry: RegistryProcess, request: pytest.FixtureRequest) -> str:
    """An image in the Basic-auth registry, named after the test."""
    repo = "login/" + request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")
    basic_registry.push_image(repo, "v1", small_image(repo))
    return f"{basic_registry.host}/{repo}:v1"


def pull(env: dict[str, str], ref: str) -> subprocess.CompletedProcess[str]:
    return fsnap(None, "pull", "--no-unpack", ref, env=env)


# -- config.json -----------------------------------------------------------------------------


def test_login_stores_auth_in_config_json(
    basic_registry: RegistryProcess, env: dict[str, str], image_ref: str
) -> None:
    host = basic_registry.host
    config = config_of(env)
    config.parent.mkdir()
    auths = {"other.example": {"auth": "eDp5"}}
    kept = {"psFormat": "table", "auths": auths}
    config.write_text(json.dumps(kept))
    stale = {**kept, "auths": {**auths, f"http://{host}/v1/": {"auth": "eDp5"}}}
    refused = fsnap(None, "login", host, "-u", "alice", "--password-stdin", stdin="nope\n", env=env)
    assert (refused.returncode, json.loads(config.read_text())) == (7, kept), refused.stderr
    # (said once, about the login: not "... refused user 'alice' for HOST: ..., or no pull
    # access", the words of a pull)
    said = refused.stderr.splitlines()[-1]
    assert said.startswith(f"fsnap: error: registry {host} refused user 'alice': "), said
    assert "wrong username or password" in said
    assert "pull access" not in said
    config.write_text(json.dumps(stale))  # an old URL-shaped entry for the host goes
    done = fsnap(
        None, "login", host, "-u", "alice", "--password-stdin", stdin=PASSWORD + "\n", env=env
    )
    assert done.returncode == 0, done.stderr
    assert "Login Succeeded" in done.stdout
    data = json.loads(config.read_text())
    assert data["auths"][host] == {"auth": base64.b64encode(b"alice:wonderland").decode()}
    assert (data["psFormat"], data["auths"]["other.example"]) == ("table", {"auth": "eDp5"})
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert sorted(p.name for p in config.parent.iterdir()) == ["config.json"]
    assert pull(env, image_ref).returncode == 0
    assert "Removing" in fsnap(None, "logout", host, env=env).stdout
    assert host not in json.loads(config.read_text())["auths"]
    assert "Not logged in" in fsnap(None, "logout", host, env=env).stdout
    assert pull(env, image_ref).returncode == 7


def test_login_with_bearer_token_registry(
    token_registry: RegistryProcess, env: dict[str, str]
) -> None:
    token_registry.push_image("private/login-token", "v1", small_image("login-token"))
    ref = f"{token_registry.host}/private/login-token:v1"
    assert pull(env, ref).returncode == 7
    done = fsnap(
        None,
        "login",
        token_registry.host,
        "--user",
        "alice",
        "--password-stdin",
        stdin=PASSWORD,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert pull(env, ref).returncode == 0


# -- credential helpers --------------------------------------------------------------------


@pytest.fixture
def helper(tmp_path: Path, env: dict[str, str]) -> Path:
    """``docker-credential-fsnaptest`` on PATH; yields its store file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "docker-credential-fsnaptest"
    program.write_text(HELPER.format(python=sys.executable))
    program.chmod(0o755)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    env["FSNAPTEST_STORE"] = str(tmp_path / "helper-store.json")
    env["FSNAPTEST_LOG"] = str(tmp_path / "helper.log")
    return tmp_path / "helper-store.json"


@pytest.mark.parametrize("setting", ["credsStore", "credHelpers"])
def test_login_through_credential_helper(
    basic_registry: RegistryProcess,
    env: dict[str, str],
    helper: Path,
    image_ref: str,
    setting: str,
) -> None:
    host = basic_registry.host
    config = config_of(env)
    config.parent.mkdir()
    chosen = "fsnaptest" if setting == "credsStore" else {host: "fsnaptest"}
    config.write_text(json.dumps({setting: chosen}))
    env[USER_ENV] = "alice"
    done = fsnap(None, "login", host, "--password-stdin", stdin=PASSWORD, env=env)
    assert done.returncode == 0, done.stderr
    del env[USER_ENV]
    assert PASSWORD not in config.read_text()
    stored = json.loads(helper.read_text())[host]
    assert stored == {"ServerURL": host, "Username": "alice", "Secret": PASSWORD}
    assert pull(env, image_ref).returncode == 0  # credentials from the helper's "get"
    assert fsnap(None, "logout", host, env=env).returncode == 0
    assert json.loads(helper.read_text()) == {}
    assert pull(env, image_ref).returncode == 7
    log = Path(env["FSNAPTEST_LOG"]).read_text().split()
    assert log == ["store", "get", "get", "erase", "get"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"credsStore": "absent"}, "docker-credential-absent is not on PATH"),
        ({"credsStore": "../../bin/sh"}, "bad credential helper name"),
        ({"auths": []}, None),
        ("{not json", "cannot read docker config"),
    ],
)
def test_bad_docker_config_is_one_line_error(
    basic_registry: RegistryProcess, env: dict[str, str], config: object, message: str | None
) -> None:
    path = config_of(env)
    path.parent.mkdir()
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    done = pull(env, f"{basic_registry.host}/login/anything:v1")
    if message is None:  # an unusable 'auths' is no credentials: the registry refuses
        assert done.returncode == 7, done.stderr
        return
    assert (done.returncode, done.stderr.count("\n")) == (4, 1), done.stderr
    assert message in done.stderr


# -- no secret on a command line -----------------------------------------------------------


@pytest.fixture
def slow_front(basic_registry: RegistryProcess) -> Iterator[FaultServer]:
    """The Basic registry behind a proxy whose first manifest answer is a 429 (2 s)."""
    with run_fault_server(basic_registry.host) as server:
        server.throttle(times=1, retry_after="2", match="/manifests/")
        yield server


@pytest.mark.parametrize("source", ["stdin", "environment"])
def test_password_never_on_command_line(
    basic_registry: RegistryProcess,
    slow_front: FaultServer,
    env: dict[str, str],
    image_ref: str,
    source: str,
) -> None:
    ref = image_ref.replace(basic_registry.host, slow_front.host)
    args = [str(FSNAP), "pull", "--no-unpack", ref]
    if source == "stdin":
        args += ["-u", "alice", "--password-stdin"]
    else:
        env.update({USER_ENV: "alice", PASSWORD_ENV: PASSWORD})
    assert PASSWORD not in " ".join(args)
    with subprocess.Popen(
        args, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as process:
        assert process.stdin is not None
        assert process.stderr is not None
        process.stdin.write(PASSWORD.encode() if source == "stdin" else b"")
        process.stdin.close()
        seen = []
        while process.poll() is None:
            try:
                line = Path(f"/proc/{process.pid}/cmdline").read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                break
            if line:  # empty once the process has exited (a zombie's)
                seen.append(line)
            time.sleep(0.1)
        process.wait(timeout=60)
        err = process.stderr.read()
    assert process.returncode == 0, err
    assert len(seen) >= 10  # it ran for over a second while we read its command line
    assert all(b"fsnap" in line and b"pull" in line for line in seen)
    assert not [line for line in seen if PASSWORD.encode() in line]
    assert slow_front.seen("GET", "/manifests/")[-1].headers.get("authorization")


def test_password_on_command_line_still_works_with_a_warning(
    env: dict[str, str], image_ref: str
) -> None:
    done = fsnap(None, "pull", "--no-unpack", "--user", f"alice:{PASSWORD}", image_ref, env=env)
    assert done.returncode == 0, done.stderr
    assert "warning: --user USER:PASS shows the password" in done.stderr


@pytest.mark.parametrize(
    ("args", "environment", "message"),
    [
        (["--password-stdin"], {}, "--password-stdin needs --user USER"),
        ([], {PASSWORD_ENV: PASSWORD}, "$FSNAP_PASSWORD needs --user USER"),
        (["-u", "alice"], {}, "no password for user 'alice'"),
        (["-u", f"alice:{PASSWORD}", "--password-stdin"], {}, "exclude each other"),
    ],
)
def test_incomplete_credentials_refused(
    env: dict[str, str], args: list[str], environment: dict[str, str], message: str
) -> None:
    env.update(environment)
    done = fsnap(None, "pull", "--no-unpack", *args, "127.0.0.1:1/login/none:v1", stdin="", env=env)
    assert (done.returncode, message in done.stderr) == (4, True), done.stderr
