"""Periodic evaluation of the current policy on environments of its own (``eval.*``).

Steps-to-target read from finished training episodes lag behind the policy by the episodes'
length, which in iterations depends on the batch size B (a batch of B steps finishes B / length
episodes): the smoothed training return of a small-B run describes policies many iterations old.
An evaluation every ``eval.interval`` iterations plays ``eval.episodes`` episodes to their end
(or to ``eval.max_episode_steps``, below), one per env of a separate vector env, with the weights
of that iteration, so a target's crossing is dated to within ``eval.interval`` iterations
whatever B is.

The eval envs start from the same seeds at every evaluation and the actions are drawn from a
generator seeded by (run seed, iteration): evaluations are reproducible and a resumed run
evaluates exactly as the uninterrupted one, with no state to checkpoint.

With ``eval.max_episode_steps`` a game still running after that many env steps is scored as it
stands: an evaluation waits for its longest game, and one policy that survives without scoring
would otherwise hold up a whole population until the game's own time limit.
"""

from __future__ import annotations

import numpy as np
import torch

from rlscale.envs import make_vector_env
from rlscale.model import build_model

EVAL_SEED_OFFSET = 1_000_003  # eval envs' seeds never coincide with the training workers'


class Evaluator:
    """A policy's evaluation on eval envs of its own. `evaluate` plays one with given weights;
    `begin` / `advance` / `returns` let a caller act with its own forward pass (a population
    evaluates all its members at once with one batched forward per step)."""

    def __init__(self, env_cfg, model_cfg, episodes: int, seed: int, max_episode_steps: int = 0):
        self.env = make_vector_env(env_cfg, episodes, seed + EVAL_SEED_OFFSET)
        self.max_episode_steps = max_episode_steps  # 0: every game plays to its end
        self.policy = build_model(self.env.spec, model_cfg)
        self.policy.eval()
        self.seed = seed
        self._returns: list[float | None] = []
        self.games_cut = 0  # games of the latest evaluation cut at max_episode_steps
        self._generator = torch.Generator()

    def begin(self, iteration: int) -> np.ndarray:
        """Start the evaluation of `iteration`: the eval envs' first observations."""
        self._generator.manual_seed(int(np.random.SeedSequence([self.seed, iteration]).generate_state(1)[0]))
        obs = self.env.reset()
        self.env.clear_episode_stats()  # the previous evaluation's unfinished games are gone
        self._returns = [None] * self.env.num_envs
        self.games_cut = 0
        return obs

    def advance(self, logits: torch.Tensor) -> np.ndarray | None:
        """Sample actions from the policy's logits [envs, A] and step; the next observations,
        or None once every eval env's episode has ended or been cut."""
        actions = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=self._generator).squeeze(-1)
        step = self.env.step(actions.numpy())
        # the raw scores of the games that ended, in env order (VecEnv._track)
        ended = np.flatnonzero(step.reset)
        assert len(ended) == len(step.episode_returns), "a reset env reports its game's score"
        for i, score in zip(ended, step.episode_returns):
            if self._returns[i] is None:
                self._returns[i] = float(score)
        if self.max_episode_steps:
            scores, lengths = self.env.games_in_progress()
            for i in np.flatnonzero(lengths >= self.max_episode_steps):
                if self._returns[i] is None:  # cut: scored as it stands
                    self._returns[i] = float(scores[i])
                    self.games_cut += 1
        return None if self.done() else step.obs

    def done(self) -> bool:
        return all(r is not None for r in self._returns)

    def returns(self) -> list[float]:
        """Raw returns of the evaluation's episodes, one per eval env."""
        return [float(r) for r in self._returns if r is not None]

    @torch.no_grad()
    def evaluate(self, weights: dict[str, np.ndarray], iteration: int) -> list[float]:
        """Raw returns of one episode per eval env (to its end or its cut), played with `weights` (sampled actions)."""
        self.policy.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
        obs: np.ndarray | None = self.begin(iteration)
        while obs is not None:
            logits, _ = self.policy(torch.from_numpy(obs))
            obs = self.advance(logits)
        return self.returns()

    def close(self) -> None:
        self.env.close()
