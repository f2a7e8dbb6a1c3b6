"""Rollout workers and the pool that runs them in-process or as Ray actors.

``RolloutWorker`` is a plain class: a vector env and a CPU copy of the policy. The pool is the
one place that knows Ray: ``LocalPool`` calls workers in turn, ``RayPool`` wraps the same class
with ``ray.remote``, sends weights through the object store, and replaces actors that die.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlscale.envs import EnvFamily, EnvSpec, check_env_id, make_vector_env
from rlscale.errors import ConfigError, WorkerFailure
from rlscale.model import build_model
from rlscale.rollout import Fragment, FrameStacks

log = logging.getLogger(__name__)


def worker_seed(seed: int, worker_index: int, restarts: int = 0) -> int:
    # Distinct, reproducible streams per worker; a restarted worker gets a fresh stream.
    return int(np.random.SeedSequence([seed, worker_index, restarts]).generate_state(1)[0])


class DenseRecorder:
    """A fragment's observations as one [T, E, *obs] array.

    With `reuse` (Ray actors) the array is kept for the next fragment: the result is copied into
    the object store when `sample` returns, so the actor writes the next fragment into the same
    pages (no page faults on a fresh allocation each time); in-process fragments are kept by the
    learner, so they get new ones.
    """

    def __init__(self, reuse: bool):
        self.reuse = reuse
        self._obs: np.ndarray | None = None

    def start(self, T: int, obs: np.ndarray) -> None:
        shape = (T, *obs.shape)
        if not self.reuse or self._obs is None or self._obs.shape != shape:
            self._obs = np.empty(shape, dtype=obs.dtype)

    def add(self, t: int, obs: np.ndarray, reset: np.ndarray) -> None:
        assert self._obs is not None, "start() first"
        self._obs[t] = obs

    def finish(self) -> np.ndarray:
        assert self._obs is not None, "start() first"
        return self._obs


class FrameStackRecorder:
    """A fragment's frame-stacked observations as FrameStacks: each new frame is stored once.

    An env's stack at step t is its stack at t-1 shifted by one frame, unless the env was reset
    at t-1; then (and at t = 0) all K frames are stored. tests/test_train.py checks the rebuilt
    observations against the dense ones over resets, truncations and lost lives. With `reuse`
    the frame storage is kept across fragments, as DenseRecorder's array is.
    """

    def __init__(self, reuse: bool):
        self.reuse = reuse
        self._frames: np.ndarray | None = None  # [capacity, H, W]

    def start(self, T: int, obs: np.ndarray) -> None:
        E, K = obs.shape[:2]
        need = E * K + T * E  # no reset inside the fragment; grows if there are some
        if not self.reuse or self._frames is None or len(self._frames) < need:
            self._frames = np.empty((need, *obs.shape[2:]), dtype=obs.dtype)
        self.index = np.empty((T, E, K), dtype=np.int32)
        self._stack = np.empty((E, K), dtype=np.int32)
        self._n = 0

    def _store(self, frames: np.ndarray) -> np.ndarray:
        assert self._frames is not None, "start() first"
        n, m = self._n, len(frames)
        if n + m > len(self._frames):
            grown = np.empty((max(2 * len(self._frames), n + m), *self._frames.shape[1:]), dtype=self._frames.dtype)
            grown[:n] = self._frames[:n]
            self._frames = grown
        self._frames[n:n + m] = frames
        self._n = n + m
        return np.arange(n, n + m, dtype=np.int32)

    def add(self, t: int, obs: np.ndarray, reset: np.ndarray) -> None:
        """obs [E, K, H, W] at step t; reset [E]: the env started a new episode at this obs."""
        any_reset = reset.any()
        shift = np.flatnonzero(~reset) if any_reset else slice(None)  # a slice on the common step
        self._stack[shift, :-1] = self._stack[shift, 1:]
        self._stack[shift, -1] = self._store(obs[shift, -1])
        if any_reset:
            new = np.flatnonzero(reset)
            self._stack[new] = self._store(obs[new].reshape(-1, *obs.shape[2:])).reshape(len(new), obs.shape[1])
        self.index[t] = self._stack

    def finish(self) -> FrameStacks:
        assert self._frames is not None, "start() first"
        return FrameStacks(self._frames[:self._n], self.index)


class RolloutWorker:
    """Steps E environments with a CPU copy of the policy; returns fragments [T, E]."""

    def __init__(self, env_cfg, model_cfg, num_envs: int, seed: int, env_offset: int, torch_threads: int | None = 1,
                 reuse_buffers: bool = False, family: EnvFamily | None = None):
        if torch_threads:  # in its own (Ray) process; in-process workers leave the learner's threads alone
            torch.set_num_threads(torch_threads)
        # A Ray actor gets the family object from the driver, so families registered there (not
        # only the built-in ones) work in actor processes too.
        self.env = family.make(env_cfg, num_envs, seed) if family is not None else make_vector_env(env_cfg, num_envs, seed)
        self.policy = build_model(self.env.spec, model_cfg)
        self.policy.eval()
        self.generator = torch.Generator().manual_seed(seed)
        self.obs = self.env.reset()
        self.version = -1
        self.env_ids = np.arange(env_offset, env_offset + num_envs, dtype=np.int64)
        # Frame-stacked observations (Atari) travel as FrameStacks: one frame per step, not K.
        self.recorder = (FrameStackRecorder if self.env.frame_stack > 1 else DenseRecorder)(reuse_buffers)
        # Failures injected on purpose by the fault tests (RLSCALE_FAIL_AFTER_SAMPLES=N: the
        # process dies, or with RLSCALE_FAIL_MODE=raise the env raises, at the N+1-th sample).
        self._fail_after = int(os.environ.get("RLSCALE_FAIL_AFTER_SAMPLES", "0"))
        self._fail_mode = os.environ.get("RLSCALE_FAIL_MODE", "exit")
        self._samples = 0

    def get_state(self) -> bytes:
        """Environments, current observations and sampling RNG, for exact resumption."""
        import cloudpickle

        return cloudpickle.dumps({"env": self.env, "obs": self.obs, "gen": self.generator.get_state(), "version": self.version})

    def set_state(self, blob: bytes) -> None:
        import cloudpickle

        s = cloudpickle.loads(blob)
        self.env, self.obs = s["env"], s["obs"]
        # The policy's weights are not in the state: the next sample must load them whatever
        # version it names (the saved version may equal the one the learner sends next).
        self.version = -1
        self.generator.set_state(s["gen"])

    def spec(self) -> EnvSpec:
        return self.env.spec

    def set_weights(self, weights: dict[str, np.ndarray], version: int) -> None:
        if version != self.version:
            with warnings.catch_warnings():
                # Arrays from Ray's object store are read-only views; load_state_dict only reads them.
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                self.policy.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
            self.version = version

    @torch.no_grad()
    def sample(self, num_steps: int, weights: dict | None = None, version: int | None = None) -> Fragment:
        if weights is not None:
            assert version is not None, "weights come with their version"
            self.set_weights(weights, version)
        self._samples += 1
        if self._fail_after and self._samples > self._fail_after:
            if self._fail_mode == "raise":
                raise RuntimeError("injected environment failure")
            os._exit(1)  # a crashed actor process
        T, E = num_steps, self.env.num_envs
        recorder = self.recorder
        recorder.start(T, self.obs)
        reset = np.ones(E, dtype=bool)  # a fragment's first observations are stored whole
        actions = np.empty((T, E), dtype=np.int64)
        logp = np.empty((T, E), dtype=np.float32)
        values = np.empty((T + 1, E), dtype=np.float32)
        rewards = np.empty((T, E), dtype=np.float32)
        terminated = np.empty((T, E), dtype=bool)
        truncated = np.empty((T, E), dtype=bool)
        next_values = np.empty((T, E), dtype=np.float32)
        ep_returns, ep_lengths = [], []
        truncated_values = {}
        for t in range(T):
            recorder.add(t, self.obs, reset)
            a, lp, v = self.policy.act(torch.from_numpy(self.obs), self.generator)
            actions[t], logp[t], values[t] = a.numpy(), lp.numpy(), v.numpy()
            step = self.env.step(actions[t])
            rewards[t], terminated[t], truncated[t] = step.reward, step.terminated, step.truncated
            if step.truncated.any():
                # The value of a truncated episode's last state, for bootstrapping.
                idx = np.flatnonzero(step.truncated & ~step.terminated)
                if len(idx):
                    truncated_values[t] = (idx, self.policy.value(torch.from_numpy(step.final_obs[idx])).numpy())
            ep_returns += step.episode_returns
            ep_lengths += step.episode_lengths
            self.obs, reset = step.obs, step.reset
        values[T] = self.policy.value(torch.from_numpy(self.obs)).numpy()
        # V(s_{t+1}) is the next step's value within an episode; after a reset it is the
        # final state's value (truncation) or irrelevant (termination, masked in GAE).
        next_values[:] = values[1:]
        for t, (idx, v) in truncated_values.items():
            next_values[t, idx] = v
        return Fragment(
            obs=recorder.finish(), actions=actions, logp=logp, values=values[:T], rewards=rewards,
            terminated=terminated, truncated=truncated, next_values=next_values,
            policy_version=self.version, env_ids=self.env_ids,
            episode_returns=ep_returns, episode_lengths=ep_lengths,
        )


@dataclass
class SampleResult:
    fragments: list[Fragment]
    discarded_env_steps: int  # steps of fragments lost to failed workers
    failures: int


def plan_envs(cfg) -> list[int]:
    """Number of envs of each worker, from workers.num_envs_per_worker(_list) and num_workers."""
    w = cfg.workers
    if w.num_envs_per_worker_list:
        return list(w.num_envs_per_worker_list)
    n = w.num_workers
    if n == 0:
        cpus = available_cpus()
        n = max(1, cpus - (1 if w.backend == "ray" and cpus > 2 else 0))  # leave the learner a core
    return [w.num_envs_per_worker] * n


def available_cpus() -> int:
    try:
        import ray

        if ray.is_initialized():
            return int(ray.available_resources().get("CPU", 1)) or 1
    except ImportError:
        pass
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class _Pool:
    """What both pools share: env slots numbered across workers, sample = submit + collect."""

    def __init__(self, envs_per_worker: list[int]):
        self.envs_per_worker = envs_per_worker
        # Worker i's envs get global ids offsets[i] ... offsets[i] + E_i - 1.
        self.offsets = [int(x) for x in np.cumsum([0] + envs_per_worker[:-1])]

    def sample(self, lengths: list[int], weights: dict, version: int) -> SampleResult:
        return self.collect(self.submit(lengths, weights, version))

    def submit(self, lengths: list[int], weights: dict, version: int):
        """Start sampling `lengths[i]` steps on worker i; returns a request for `collect`."""
        raise NotImplementedError

    def collect(self, request) -> SampleResult:
        """The fragments of a request from `submit`, in worker order."""
        raise NotImplementedError


class LocalPool(_Pool):
    """The same workers, called in turn in this process (workers.backend=local)."""

    def __init__(self, cfg, envs_per_worker: list[int]):
        super().__init__(envs_per_worker)
        self.workers = [
            RolloutWorker(cfg.env, cfg.model, e, worker_seed(cfg.seed, i), self.offsets[i], torch_threads=None)
            for i, e in enumerate(envs_per_worker)
        ]

    def spec(self) -> EnvSpec:
        return self.workers[0].spec()

    def submit(self, lengths: list[int], weights: dict, version: int):
        # In-process workers cannot run beside the learner: the request runs at collect time,
        # with the weights given here, so results equal the Ray backend's.
        return (lengths, weights, version)

    def collect(self, request) -> SampleResult:
        lengths, weights, version = request
        frags = [w.sample(T, weights, version) for w, T in zip(self.workers, lengths) if T > 0]
        return SampleResult(frags, 0, 0)

    def get_state(self) -> list[bytes] | None:
        """Picklable worker state (classic control); None where the envs cannot be saved (ALE)."""
        try:
            return [w.get_state() for w in self.workers]
        except Exception:
            return None

    def set_state(self, blobs: list[bytes]) -> None:
        for w, b in zip(self.workers, blobs):
            w.set_state(b)

    def close(self) -> None:
        for w in self.workers:
            w.env.close()


class RayPool(_Pool):
    """RolloutWorker as Ray actors; weights travel once per version through the object store."""

    def __init__(self, cfg, envs_per_worker: list[int]):
        import ray

        super().__init__(envs_per_worker)
        self.ray = ray
        self.cfg = cfg
        self.remote_cls = ray.remote(RolloutWorker)
        self.restarts = [0] * len(envs_per_worker)
        self.failures = 0
        # Inside a sweep trial the actors go into the trial's placement group (bundle 1 + i).
        self.placement_group = ray.util.get_current_placement_group()
        self._check_resources()
        self.actors = [self._make(i) for i in range(len(envs_per_worker))]
        self._spec = self._wait_started()

    def _check_resources(self) -> None:
        """Refuse at once what a local cluster can never place (Ray would wait forever). A cluster
        joined by address may autoscale, and a trial's placement group has reserved its CPUs:
        there only the bounded start wait applies."""
        if self.placement_group is not None or self.cfg.workers.address or os.environ.get("RAY_ADDRESS"):
            return
        w = self.cfg.workers
        need = len(self.envs_per_worker) * w.num_cpus_per_worker
        total = self.ray.cluster_resources().get("CPU", 0.0)
        if need > total:
            raise ConfigError(
                f"{len(self.envs_per_worker)} rollout workers x {w.num_cpus_per_worker:g} CPUs need {need:g} CPUs but the "
                f"Ray cluster has {total:g}; lower workers.num_workers or workers.num_cpus_per_worker, or add nodes")

    def _wait_started(self) -> EnvSpec:
        """Every actor up (placed and its envs built), within workers.start_timeout_s."""
        timeout = self.cfg.workers.start_timeout_s
        refs = [a.spec.remote() for a in self.actors]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(ready) < len(refs):
            self.close()
            free = self.ray.available_resources().get("CPU", 0.0)
            raise ConfigError(
                f"only {len(ready)} of {len(refs)} rollout workers started within workers.start_timeout_s={timeout:g} s "
                f"({free:g} CPUs free in the cluster now); free resources, lower workers.num_workers, or raise the timeout")
        try:
            specs = self.ray.get(ready)
        except self.ray.exceptions.RayError as e:  # an actor's constructor failed (its env, its model)
            self.close()
            lines = [x for x in str(e).splitlines() if x.strip()]
            raise ConfigError(f"a rollout worker failed to start: {lines[-1][:300] if lines else type(e).__name__}") from None
        return specs[0]

    def _make(self, i: int):
        c = self.cfg
        opts = dict(num_cpus=c.workers.num_cpus_per_worker, max_restarts=0, max_task_retries=0)
        inject = {k: os.environ[k] for k in ("RLSCALE_FAIL_AFTER_SAMPLES", "RLSCALE_FAIL_MODE") if k in os.environ}
        if inject:
            opts["runtime_env"] = {"env_vars": inject}
        strategy: Any = "SPREAD"  # across the nodes of a multi-node cluster
        if self.placement_group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            strategy = PlacementGroupSchedulingStrategy(self.placement_group, placement_group_bundle_index=1 + i)
        return self.remote_cls.options(scheduling_strategy=strategy, **opts).remote(
            c.env, c.model, self.envs_per_worker[i], worker_seed(c.seed, i, self.restarts[i]), self.offsets[i],
            reuse_buffers=True, family=self._family(),
        )

    def _family(self) -> EnvFamily:
        """The env's family, shipped to the actors; a family defined outside rlscale travels
        with its module's code (the actor's process may not be able to import that module)."""
        import sys

        family = check_env_id(self.cfg.env.id)
        module = sys.modules.get(type(family).__module__)
        if module is not None and module.__name__ != "__main__" and not module.__name__.startswith("rlscale."):
            self.ray.cloudpickle.register_pickle_by_value(module)
        return family

    def spec(self) -> EnvSpec:
        return self._spec

    def submit(self, lengths: list[int], weights: dict, version: int):
        """Start sampling on every actor and return at once (the learner may work meanwhile)."""
        weights_ref = self.ray.put(weights)  # one copy in the object store, shared by all actors
        pending = {i: self.actors[i].sample.remote(T, weights_ref, version) for i, T in enumerate(lengths) if T > 0}
        return lengths, pending

    def collect(self, request) -> SampleResult:
        ray = self.ray
        lengths, pending = request
        frags: dict[int, Fragment] = {}
        discarded = failures = 0
        for i, ref in pending.items():  # in worker order, so results do not depend on timing
            try:
                frags[i] = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError, ray.exceptions.ActorDiedError) as e:
                failures += 1
                self.failures += 1
                discarded += lengths[i] * self.envs_per_worker[i]
                log.warning("rollout worker %d failed (%s); restarting it", i, type(e).__name__)
                if self.failures > self.cfg.workers.max_restarts:
                    raise WorkerFailure(
                        f"rollout workers failed {self.failures} times, more than workers.max_restarts="
                        f"{self.cfg.workers.max_restarts}; last error: {str(e).splitlines()[0][:200]}"
                    ) from None
                try:
                    ray.kill(self.actors[i])
                except Exception:
                    pass
                self.restarts[i] += 1
                self.actors[i] = self._make(i)
        return SampleResult([frags[i] for i in sorted(frags)], discarded, failures)

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:
                pass


def make_pool(cfg):
    envs = plan_envs(cfg)
    if cfg.workers.backend == "local":
        return LocalPool(cfg, envs)
    return RayPool(cfg, envs)
