"""`rlscale submit`: run an rlscale command as a Ray job on a (remote) cluster.

The job goes through Ray's Job Submission SDK (``ray.job_submission.JobSubmissionClient``):

* the runtime environment ships the working directory (the repo by default) without run
  outputs (``/runs/``, ``/sweeps/``, ``wandb/``), ``.git`` and caches, so the job's current
  directory holds ``rlscale/`` and ``configs/``; the entrypoint is ``python -m rlscale ...``, so
  nothing needs installing on the cluster beyond the dependencies. A working directory without
  the ``rlscale`` package also gets the installed package as a ``py_modules`` entry.
* ``WANDB_MODE`` is the only variable passed to the job (``offline`` unless set here); no W&B
  key or other secret is ever put in the runtime env, the entrypoint or the logs.
* token authentication (on by default in Ray >= 2.52) stays on: the token is found the way
  Ray's own loader does it (``RAY_AUTH_TOKEN``, then the file at ``RAY_AUTH_TOKEN_PATH``, then
  ``~/.ray/auth_token``) and sent as ``authorization: Bearer ...``, the header Ray's
  ``JobSubmissionClient`` and dashboard use. The token is never printed.

Errors a user can act on (unreachable address, missing or wrong token, a config file that the
upload would leave out) are ``ConfigError``s, which the CLI prints as one line with exit 2.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from rlscale.errors import ConfigError

# gitignore-style patterns (Ray's runtime_env "excludes"), relative to the working dir. Output
# directories are anchored ("/sweeps/"), so configs/sweeps/ is still shipped. /docs/results/ holds
# the committed study records (over 100 MiB, the job server's limit on one upload) and, on the
# machine that runs a study, its checkpoints: a job needs none of it.
EXCLUDES = [
    "/runs/",
    "/sweeps/",
    "/docs/results/",
    "wandb/",
    ".git",
    "__pycache__/",
    "*.pyc",
    ".pytest_cache/",
    ".hypothesis/",
    ".benchmarks/",
    "*.egg-info/",
    ".venv/",
]
COMMANDS = ("train", "sweep", "analyze")
PROBE_TIMEOUT_S = 10.0
"""Socket timeout of the reachability / auth check."""
CONNECT_DEADLINE_S = 30.0
"""Hard bound on the check (covers slow DNS too), so a bad address fails well within a minute."""

_AUTH_HELP = ("set RAY_AUTH_TOKEN to the cluster's token (print it on the head with `ray get-auth-token`), "
              "or point RAY_AUTH_TOKEN_PATH at a file holding it, or store it in ~/.ray/auth_token")


# --------------------------------------------------------------------------------------- auth

def find_auth_token() -> tuple[str | None, str]:
    """The Ray auth token and where it came from, in the order of Ray's AuthenticationTokenLoader.

    1. ``RAY_AUTH_TOKEN``; 2. the file named by ``RAY_AUTH_TOKEN_PATH``; 3. ``~/.ray/auth_token``.
    Returns ``(None, "")`` when there is none. Read here rather than through
    ``ray._raylet.AuthenticationTokenLoader``: that loader is private and caches the token per
    process (resetting it would also change the token of a Ray driver running in this process).
    """
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token, "RAY_AUTH_TOKEN"
    path_env = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path_env:
        path = Path(path_env).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH is set to '{path}' but it cannot be read ({e.strerror}); "
                              "point it at the file holding the cluster's token or unset it") from None
        if not token:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH is set to '{path}' but the file is empty; "
                              "put the cluster's token there (`ray get-auth-token` on the head)")
        return token, "RAY_AUTH_TOKEN_PATH"
    default = Path.home() / ".ray" / "auth_token"
    try:
        token = default.read_text().strip()
    except OSError:
        return None, ""
    return (token, "~/.ray/auth_token") if token else (None, "")


def auth_headers() -> tuple[dict[str, str], str]:
    token, source = find_auth_token()
    return ({"authorization": f"Bearer {token}"} if token else {}), source


# ---------------------------------------------------------------------------------- address

def normalize_address(address: str) -> str:
    address = (address or "").strip().rstrip("/")
    if not address:
        raise ConfigError("no Ray address given; pass --address http://HOST:8265 (the head's dashboard)")
    if address.startswith("ray://") or address == "auto":
        raise ConfigError(f"'{address}' is a Ray client/driver address; `rlscale submit` needs the job server, "
                          "i.e. the head's dashboard: --address http://HOST:8265")
    if "://" not in address:
        address = "http://" + address
    return address


def _unreachable(address: str, reason: str) -> ConfigError:
    reason = " ".join(str(reason).split())[:160]
    return ConfigError(f"cannot reach the Ray job server at {address} ({reason}); check the address "
                       "(http://HOST:8265) and that the head runs with ray[default]")


def check_server(address: str, headers: dict[str, str], token_source: str) -> str:
    """GET /api/version with the auth header; returns the cluster's Ray version or raises ConfigError."""
    result: dict = {}

    def probe():
        req = urllib.request.Request(address + "/api/version", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=PROBE_TIMEOUT_S) as r:
                result["body"] = r.read(65536)
        except urllib.error.HTTPError as e:
            result["http"] = e.code
        except Exception as e:  # URLError, timeouts, refused connections, bad URLs
            result["error"] = getattr(e, "reason", None) or e

    t = threading.Thread(target=probe, daemon=True, name="rlscale-submit-probe")
    t.start()
    t.join(CONNECT_DEADLINE_S)
    if t.is_alive():
        raise _unreachable(address, f"no answer within {CONNECT_DEADLINE_S:.0f} s")
    if "error" in result:
        raise _unreachable(address, result["error"])
    code = result.get("http")
    if code == 401:
        raise ConfigError(f"the Ray job server at {address} requires an auth token (token authentication is on) "
                          f"and none was found; {_AUTH_HELP}")
    if code == 403:
        raise ConfigError(f"the Ray job server at {address} rejected the auth token from {token_source}; "
                          f"{_AUTH_HELP}")
    if code == 404:
        raise _unreachable(address, "HTTP 404: no job API there")
    if code is not None:
        raise _unreachable(address, f"HTTP {code}")
    try:
        return str(json.loads(result["body"])["ray_version"])
    except Exception:
        raise _unreachable(address, "the answer to /api/version is not Ray's") from None


# ---------------------------------------------------------------------------------- command

def parse_command(command: list[str] | None) -> list[str]:
    cmd = list(command or [])
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    for prefix in (["python", "-m", "rlscale"], ["python3", "-m", "rlscale"], ["rlscale"]):
        if cmd[:len(prefix)] == prefix:
            cmd = cmd[len(prefix):]
            break
    if not cmd:
        raise ConfigError("no command to submit; run e.g. `rlscale submit --address http://HOST:8265 -- "
                          "train configs/cartpole.yaml`")
    if cmd[0] not in COMMANDS:
        raise ConfigError(f"'{cmd[0]}' is not an rlscale command to submit; use one of {', '.join(COMMANDS)}, "
                          "e.g. `rlscale submit --address http://HOST:8265 -- sweep configs/sweeps/cartpole_ci.yaml`")
    return cmd


def _excluded(working_dir: Path, rel: Path) -> bool:
    """Whether Ray's upload of `working_dir` would leave `rel` out (our excludes, .gitignore, .rayignore).

    Mirrors ray._private.runtime_env.packaging._dir_travel: ignore files apply from the directory
    holding them downwards, and an excluded directory hides everything inside it.
    """
    try:
        from ray._private.runtime_env.packaging import _get_excludes, get_excludes_from_ignore_files
    except ImportError:  # a Ray without these helpers: skip the check, the job reports missing files
        return False
    include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    import logging

    quiet = logging.getLogger("rlscale.submit.excludes")
    quiet.disabled = True
    matchers = [_get_excludes(working_dir, EXCLUDES)]
    path = working_dir
    for part in rel.parts:
        matchers += get_excludes_from_ignore_files(path, include_gitignore=include_gitignore, logger=quiet)
        path = path / part
        if any(m(path) for m in matchers):
            return True
    return False


def check_shipped(cmd: list[str], working_dir: Path) -> None:
    """Relative paths on the command line that exist here must reach the cluster's working dir."""
    for arg in cmd[1:]:
        if arg.startswith("-") or "=" in arg or os.path.isabs(arg):
            continue
        local = (working_dir / arg)
        if not local.exists():
            continue
        try:
            rel = local.resolve().relative_to(working_dir)
        except ValueError:
            continue
        if _excluded(working_dir, rel):
            raise ConfigError(f"'{arg}' would not be shipped to the cluster: it matches rlscale's excludes "
                              f"({' '.join(EXCLUDES[:3])} ...) or a .gitignore/.rayignore pattern in {working_dir}; "
                              "anchor that pattern (e.g. '/sweeps/' rather than 'sweeps/') or set "
                              "RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1")


def build_runtime_env(working_dir: Path) -> dict:
    env = {
        "working_dir": str(working_dir),
        "excludes": list(EXCLUDES),
        # Only WANDB_MODE crosses over; never WANDB_API_KEY or any other secret.
        "env_vars": {"WANDB_MODE": os.environ.get("WANDB_MODE") or "offline"},
    }
    if not (working_dir / "rlscale" / "__init__.py").is_file():
        import rlscale

        env["py_modules"] = [str(Path(rlscale.__file__).resolve().parent)]
    return env


# ----------------------------------------------------------------------------------- submit

def _ray_error(address: str, e: Exception) -> ConfigError:
    text = " ".join(str(e).split())
    if type(e).__name__ == "AuthenticationError" or "Unauthorized" in text or "Forbidden" in text:
        return ConfigError(f"the Ray job server at {address} refused the request ({text[:160]}); {_AUTH_HELP}")
    if "413" in text:  # the zipped working dir is over the server's limit on one request
        return ConfigError(f"the Ray job server at {address} refused the upload of the working dir as too large "
                           f"({text[:160]}); leave large files out of --working-dir with a .rayignore file there")
    return ConfigError(f"the Ray job server at {address} failed the submission ({type(e).__name__}: {text[:200]})")


def _follow(client, job_id: str) -> str:
    """Print the job's logs as they come; return its terminal status."""
    from ray.job_submission import JobStatus

    async def tail():
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except Exception as e:  # a dropped log stream must not lose the job's status
        print(f"rlscale: log stream of {job_id} ended early ({type(e).__name__}); polling its status",
              file=sys.stderr)
    while True:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status.value if hasattr(status, "value") else status)
        time.sleep(1.0)


def submit(address: str, command: list[str] | None, wait: bool = False, working_dir: str | os.PathLike = ".") -> int:
    """Submit `rlscale <command>` as a Ray job; print its id; with `wait`, follow it (0 = SUCCEEDED)."""
    address = normalize_address(address)
    cmd = parse_command(command)
    wd = Path(working_dir).expanduser().resolve()
    if not wd.is_dir():
        raise ConfigError(f"--working-dir '{working_dir}' is not a directory; pass the repo root (default '.')")
    check_shipped(cmd, wd)
    headers, source = auth_headers()
    check_server(address, headers, source)

    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:
        raise ConfigError(f"the Ray job SDK is missing here ({e}); install ray[default]") from None
    entrypoint = "python -m rlscale " + shlex.join(cmd)
    try:
        client = JobSubmissionClient(address, headers=dict(headers))
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=build_runtime_env(wd),
                                   metadata={"rlscale_command": cmd[0]})
    except ConfigError:
        raise
    except Exception as e:  # AuthenticationError, RuntimeError (HTTP), ConnectionError, upload errors
        raise _ray_error(address, e) from None
    print(job_id, flush=True)
    print(f"rlscale: submitted `{entrypoint}` to {address} as {job_id}", file=sys.stderr)
    if not wait:
        print(f"rlscale: follow it with `ray job logs --follow --address {address} {job_id}` "
              "(with RAY_AUTH_MODE=token set)", file=sys.stderr)
        return 0
    try:
        status = _follow(client, job_id)
    except KeyboardInterrupt:
        print(f"rlscale: stopped following {job_id}; it keeps running on the cluster "
              f"(stop it with `ray job stop --address {address} {job_id}`)", file=sys.stderr)
        return 130
    except Exception as e:
        raise _ray_error(address, e) from None
    if status == "SUCCEEDED":
        print(f"rlscale: job {job_id} SUCCEEDED", file=sys.stderr)
        return 0
    try:
        message = client.get_job_info(job_id).message or ""
    except Exception:
        message = ""
    print(f"rlscale: job {job_id} {status}" + (f": {' '.join(message.split())[:300]}" if message else ""),
          file=sys.stderr)
    return 1
