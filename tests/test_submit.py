"""`rlscale submit` against a real Ray head (loopback only, token auth on).

The head is started once per module with ``ray start --head --block`` in its own session and
its own ``--temp-dir``, with token auth forced on (``RAY_AUTH_MODE=token``) and a fresh token in
a file under that temp dir (``RAY_AUTH_TOKEN_PATH``): it works on a machine with no token yet and
never reads, writes or deletes ``~/.ray/auth_token``.

Teardown does NOT use ``ray stop --force``: that command has no filter and kills every Ray process
on the machine -- the ``ray_local`` session cluster of tests/conftest.py (a ``ray.init()`` in this
very pytest process) and anybody else's Ray on a shared machine. Instead it stops only the
processes this fixture started: it records the ``ray start --block`` process and all of its
descendants (raylet, GCS, dashboard, agents, workers, the job driver), sends SIGTERM to the
``ray start`` process -- which shuts its node down, as ``--block`` owns it -- then SIGKILLs any
recorded process that is still alive (matched by pid *and* start time, so a reused pid is never
hit) and removes the temp dir. The distinct temp dir also keeps this head's
``ray_current_cluster`` file away from /tmp/ray, so a later ``ray.init()`` never joins it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rlscale.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, start time) from /proc."""
    table = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(d.name)] = (int(fields[1]), fields[19])
    return table


def _tree(root: int) -> list[tuple[int, str]]:
    """(pid, start time) of `root` and all its descendants."""
    table = _proc_table()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out.append((pid, table[pid][1]))
            todo += [c for c, (pp, _) in table.items() if pp == pid]
    return out


def _alive(pid: int, start: str) -> bool:
    entry = _proc_table().get(pid)
    return entry is not None and entry[1] == start


def _get(url: str, headers: dict | None = None, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def ray_head():
    temp = Path(tempfile.mkdtemp(prefix="rlsray-"))  # short: Ray's unix sockets live under it
    token_file = temp / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), RAY_USAGE_STATS_ENABLED="0")
    dash = _free_port()
    ports = {"port": _free_port(), "dashboard-port": dash, "ray-client-server-port": _free_port(),
             "dashboard-agent-listen-port": _free_port(), "dashboard-agent-grpc-port": _free_port(),
             "runtime-env-agent-port": _free_port(), "metrics-export-port": _free_port(),
             "node-manager-port": _free_port(), "object-manager-port": _free_port()}
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
           "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--num-cpus=2",
           "--include-dashboard=true", f"--temp-dir={temp / 'ray'}", "--disable-usage-stats",
           *[f"--{k}={v}" for k, v in ports.items()]]
    log = open(temp / "ray_start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    auth = {"authorization": f"Bearer {token_file.read_text()}"}
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited with {proc.returncode}:\n{(temp / 'ray_start.log').read_text()[-3000:]}")
            try:
                if _get(address + "/api/version", auth, timeout=2) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the Ray job API did not come up within 120 s")
            time.sleep(0.5)
        yield {"address": address, "dashboard_port": dash, "token_file": token_file, "auth": auth}
    finally:
        recorded = _tree(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1.0)
        for pid, start in recorded:
            if _alive(pid, start):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        proc.wait(timeout=10)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def head_token_env(ray_head, monkeypatch):
    """This test's rlscale process finds the head's token the way a user would (RAY_AUTH_TOKEN_PATH)."""
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_head["token_file"]))
    return ray_head


def test_submit_cartpole_wait_succeeds(head_token_env, tmp_path, monkeypatch, capsys):
    from ray.job_submission import JobStatus, JobSubmissionClient

    head = head_token_env
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key-must-not-travel")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "run"
    rc = main(["submit", "--address", head["address"], "--wait", "--working-dir", str(ROOT), "--",
               "train", "configs/cartpole.yaml", "total_env_steps=1024", "workers.backend=local",
               "tracking.wandb_mode=disabled", "--out", str(run_dir)])
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    job_id = out.splitlines()[0].strip()
    client = JobSubmissionClient(head["address"], headers=dict(head["auth"]))
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED
    assert (run_dir / "summary.json").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] >= 1024
    info = client.get_job_info(job_id)
    assert info.entrypoint.startswith("python -m rlscale train configs/cartpole.yaml")
    assert info.runtime_env["env_vars"] == {"WANDB_MODE": "offline"}
    token = head["token_file"].read_text()
    for text in (out, err, json.dumps(info.runtime_env), info.entrypoint):
        assert token not in text and "not-a-real-key" not in text


def test_failed_job_exits_1(head_token_env, capsys):
    rc = main(["submit", "--address", head_token_env["address"], "--wait", "--working-dir", str(ROOT), "--",
               "train", "configs/no_such_config.yaml", "workers.backend=local"])
    out, err = capsys.readouterr()
    assert rc == 1, err[-2000:]
    assert "FAILED" in err and "no_such_config.yaml" in out + err


def test_job_api_refuses_requests_without_token(ray_head, tmp_path, monkeypatch, capsys):
    url = f"http://127.0.0.1:{ray_head['dashboard_port']}/api/jobs/"
    assert _get(url) == 401
    assert _get(url, {"authorization": "Bearer wrong"}) == 403
    assert _get(url, ray_head["auth"]) == 200

    # rlscale with no token anywhere (fresh HOME) and with a wrong one: one clear line naming RAY_AUTH_TOKEN
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    argv = ["submit", "--address", ray_head["address"], "--working-dir", str(ROOT), "--", "train", "configs/cartpole.yaml"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlscale: error: ") and "RAY_AUTH_TOKEN" in err and "none was found" in err
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong-token")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "rejected the auth token from RAY_AUTH_TOKEN" in err and "wrong-token" not in err


def test_unreachable_address_is_one_line_exit_2(capsys):
    t0 = time.monotonic()
    rc = main(["submit", "--address", "http://127.0.0.1:1", "--working-dir", str(ROOT), "--",
               "train", "configs/cartpole.yaml"])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2 and elapsed < 60
    assert err.count("\n") == 1
    assert err.startswith("rlscale: error: cannot reach the Ray job server at http://127.0.0.1:1 (")
    assert "check the address (http://HOST:8265) and that the head runs with ray[default]" in err


def test_runtime_env_ships_code_not_outputs_or_secrets(monkeypatch):
    from rlscale.submit import _excluded, build_runtime_env

    monkeypatch.setenv("WANDB_API_KEY", "secret")
    monkeypatch.setenv("WANDB_MODE", "online")
    env = build_runtime_env(ROOT)
    assert env["working_dir"] == str(ROOT) and "py_modules" not in env
    assert env["env_vars"] == {"WANDB_MODE": "online"}
    monkeypatch.setenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "1")  # judge rlscale's own excludes alone
    for kept in ("rlscale/cli.py", "configs/cartpole.yaml", "configs/sweeps/cartpole_ci.yaml"):
        assert not _excluded(ROOT, Path(kept)), kept
    for dropped in ("sweeps/x/trial.json", "wandb/run", ".git/HEAD", "rlscale/__pycache__/cli.pyc",
                    "docs/results/study/ppo/analysis.json"):
        assert _excluded(ROOT, Path(dropped)), dropped


def test_an_upload_over_the_job_servers_limit_names_the_fix():
    from rlscale.submit import _ray_error

    e = RuntimeError("Request failed with status code 413: Maximum request body size 104857600 exceeded..")
    msg = str(_ray_error("http://127.0.0.1:8265", e))
    assert "refused the upload of the working dir as too large" in msg and ".rayignore" in msg and "\n" not in msg
    other = str(_ray_error("http://127.0.0.1:8265", RuntimeError("Request failed with status code 500: boom")))
    assert "failed the submission (RuntimeError: Request failed with status code 500: boom)" in other
