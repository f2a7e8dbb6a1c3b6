"""Rollout fragments, GAE, and the assembly of fragments into batches of exact size.

A fragment is T steps x E envs from one worker, self-contained for GAE: ``next_values[t, e]``
is the behaviour value of the state that followed step t in the same episode (the next
observation, the truncated episode's final observation, or the observation after the
fragment's end). So advantages are computed once per fragment as it arrives, and a batch can
then take any number of steps from any fragments, splitting one where it must.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class FrameStacks:
    """Frame-stacked observations with every frame stored once: observation i is frames[index[i]].

    Consecutive steps of one Atari env share K-1 of their K stacked frames, so a fragment holds
    about one 84x84 frame per step instead of K: a K-th of the bytes copied by the actors, sent
    through Ray's object store and held in the learner's batch. ``frames`` is [F, H, W] and
    ``index`` [..., K]; both may be NumPy arrays or torch tensors. Indexing (``stacks[ix]``)
    gives dense [..., K, H, W] observations, as an array would; ``rows`` a lazy subset.
    """

    def __init__(self, frames, index):
        self.frames, self.index = frames, index

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.index.shape, *self.frames.shape[1:])

    @property
    def nbytes(self) -> int:
        return int(self.frames.nbytes + self.index.nbytes)

    def __getitem__(self, ix):
        return self._gather(self.index[ix])

    def dense(self):
        return self._gather(self.index)

    def _gather(self, index):
        # Whole frames by row: index_select copies rows, where element-wise fancy indexing of
        # uint8 frames in torch is an order of magnitude slower (commit 42fee42).
        flat_frames = self.frames.reshape(len(self.frames), -1)
        flat_index = index.reshape(-1)
        if isinstance(flat_frames, np.ndarray):
            rows = np.take(flat_frames, flat_index, axis=0)
        else:
            import torch

            rows = torch.index_select(flat_frames, 0, flat_index)
        return rows.reshape(*index.shape, *self.frames.shape[1:])

    def reshape(self, *shape: int) -> FrameStacks:
        """Reshape the leading (step) dims; the trailing (K, H, W) stay: reshape(n, K, H, W)."""
        return FrameStacks(self.frames, self.index.reshape(*shape[:-2]))

    def rows(self, ix) -> FrameStacks:
        """The observations ix, holding only the frames they use."""
        return FrameStacks(self.frames, self.index[ix]).compact()

    def compact(self) -> FrameStacks:
        used, inverse = np.unique(self.index, return_inverse=True)
        return FrameStacks(self.frames[used], inverse.reshape(self.index.shape).astype(np.int32))

    @staticmethod
    def concatenate(parts: list[FrameStacks]) -> FrameStacks:
        offsets = np.cumsum([0] + [len(p.frames) for p in parts[:-1]])
        return FrameStacks(np.concatenate([p.frames for p in parts]),
                           np.concatenate([p.index + np.int32(o) for p, o in zip(parts, offsets)]))

    def to(self, device) -> FrameStacks:
        """torch tensors on `device` (frames stay uint8, the index int32)."""
        import torch

        return FrameStacks(torch.from_numpy(np.asarray(self.frames)).to(device),
                           torch.from_numpy(np.asarray(self.index, dtype=np.int32)).to(device))


def take_rows(x, ix):
    """x[ix] for an array, the lazy subset for FrameStacks."""
    return x.rows(ix) if isinstance(x, FrameStacks) else x[ix]


def concat_rows(parts: list):
    if isinstance(parts[0], FrameStacks):
        return FrameStacks.concatenate(parts)
    return np.concatenate(parts)


@dataclass
class Fragment:
    obs: np.ndarray | FrameStacks  # [T, E, *obs_shape] (uint8 frame stacks for Atari)
    actions: np.ndarray  # [T, E] int64
    logp: np.ndarray  # [T, E] float32, behaviour log-prob of the action
    values: np.ndarray  # [T, E] float32, behaviour V(s_t)
    rewards: np.ndarray  # [T, E] float32, training reward r_t
    terminated: np.ndarray  # [T, E] bool: the episode ended at t+1, no bootstrap
    truncated: np.ndarray  # [T, E] bool: time limit at t+1, bootstrap from next_values
    next_values: np.ndarray  # [T, E] float32, V(s_{t+1}) of the same episode (unused if terminated)
    policy_version: int  # learner version of the weights that acted
    env_ids: np.ndarray  # [E] int64, global index of each env slot (worker offset + e)
    episode_returns: list[float] = field(default_factory=list)  # raw scores of finished games
    episode_lengths: list[int] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])

    @property
    def num_envs(self) -> int:
        return int(self.actions.shape[1])

    @property
    def size(self) -> int:
        return self.num_steps * self.num_envs


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over [T, E] arrays; returns (advantages, returns).

    delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t); the recursion
    A_t = delta_t + gamma * lambda * A_{t+1} stops at any episode end (terminated or
    truncated), while a truncated step still bootstraps from the value of its final state.
    """
    T = rewards.shape[0]
    adv = np.zeros(rewards.shape, dtype=np.float32)
    not_term = 1.0 - terminated.astype(np.float32)
    cont = 1.0 - (terminated | truncated).astype(np.float32)
    last = np.zeros(rewards.shape[1:], dtype=np.float32)
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * next_values[t] * not_term[t] - values[t]
        last = delta + gamma * gae_lambda * cont[t] * last
        adv[t] = last
    return adv, adv + values


# Keys of a flat batch: one entry per env step, all arrays share the leading dim N.
BATCH_KEYS = ("obs", "actions", "logp", "values", "advantages", "returns", "env_ids", "time", "versions")


def flatten_fragment(frag: Fragment, gamma: float, gae_lambda: float) -> dict[str, np.ndarray | FrameStacks]:
    """GAE on the whole fragment, then [T, E] -> [T*E] in time-major order."""
    adv, ret = compute_gae(frag.rewards, frag.values, frag.next_values, frag.terminated, frag.truncated, gamma, gae_lambda)
    T, E = frag.num_steps, frag.num_envs
    n = T * E
    return {
        "obs": frag.obs.reshape(n, *frag.obs.shape[2:]),
        "actions": frag.actions.reshape(n),
        "logp": frag.logp.reshape(n),
        "values": frag.values.reshape(n),
        "advantages": adv.reshape(n),
        "returns": ret.reshape(n),
        "env_ids": np.broadcast_to(frag.env_ids[None, :], (T, E)).reshape(n).astype(np.int64),
        "time": np.broadcast_to(np.arange(T)[:, None], (T, E)).reshape(n).astype(np.int64),
        "versions": np.full(n, frag.policy_version, dtype=np.int64),
    }


class FragmentBuffer:
    """FIFO of flattened steps: fragments of any size in, batches of exactly n steps out.

    Every step that goes in comes out exactly once, in arrival order. Steps left over from a
    fragment that was split wait for the next batch (their policy lag is then measured).
    """

    def __init__(self, gamma: float, gae_lambda: float):
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self._pieces: deque[dict[str, np.ndarray | FrameStacks]] = deque()
        self._size = 0
        self._next_fragment = 0

    def __len__(self) -> int:
        return self._size

    def add(self, frag: Fragment) -> None:
        piece = flatten_fragment(frag, self.gamma, self.gae_lambda)
        # A fragment id per step keeps env slices of different fragments apart.
        piece["fragment"] = np.full(frag.size, self._next_fragment, dtype=np.int64)
        self._next_fragment += 1
        self._pieces.append(piece)
        self._size += frag.size

    def take(self, n: int) -> dict[str, Any]:  # arrays, but 'obs' may be FrameStacks
        if n <= 0 or n > self._size:
            raise ValueError(f"cannot take {n} steps from a buffer holding {self._size}")
        parts, need = [], n
        while need:
            piece = self._pieces[0]
            m = len(piece["actions"])
            if m <= need:
                parts.append(self._pieces.popleft())
                need -= m
            else:
                head, tail = slice(None, need), slice(need, None)
                parts.append({k: take_rows(v, head) for k, v in piece.items()})
                self._pieces[0] = {k: take_rows(v, tail) for k, v in piece.items()}
                need = 0
        self._size -= n
        if len(parts) == 1:
            return {k: v if isinstance(v, FrameStacks) else np.ascontiguousarray(v) for k, v in parts[0].items()}
        return {k: concat_rows([p[k] for p in parts]) for k in parts[0]}

    def state_dict(self) -> dict:
        """Plain arrays only (checkpoints load with a weights-only unpickler)."""
        def plain(piece):
            out = {k: v for k, v in piece.items() if not isinstance(v, FrameStacks)}
            if isinstance(piece["obs"], FrameStacks):
                out["obs_frames"], out["obs_index"] = piece["obs"].frames, piece["obs"].index
            return out

        return {"pieces": [plain(p) for p in self._pieces], "next_fragment": self._next_fragment}

    def load_state_dict(self, state: dict) -> None:
        def restore(piece):
            # checkpoints hold tensors (the weights-only unpickler's format); the buffer holds arrays
            piece = {k: v.numpy() if hasattr(v, "numpy") else v for k, v in piece.items()}
            if "obs_frames" in piece:
                piece["obs"] = FrameStacks(piece.pop("obs_frames"), piece.pop("obs_index"))
            return piece

        self._pieces = deque(restore(p) for p in state["pieces"])
        self._size = sum(len(p["actions"]) for p in self._pieces)
        self._next_fragment = state["next_fragment"]


def microbatch_groups(batch: dict, minibatch: np.ndarray, microbatch_size: int, mode: str) -> list[np.ndarray]:
    """Positions into `minibatch` (an index array of the batch's steps) for each micro-batch.

    'random': consecutive runs of the minibatch's (random) order. 'env': the minibatch's steps
    grouped by env slice (one env of one fragment) in time order, so that a micro-batch holds
    temporally correlated steps of few envs. The union is the whole minibatch either way: the
    grouping changes what the noise estimate compares, never which steps are trained on.
    """
    n = len(minibatch)
    if mode == "random":
        positions = np.arange(n)
    elif mode == "env":
        positions = np.lexsort((batch["time"][minibatch], batch["env_ids"][minibatch], batch["fragment"][minibatch]))
    else:
        raise ValueError(f"unknown micro-batch mode '{mode}'")
    return [positions[i:i + microbatch_size] for i in range(0, n, microbatch_size)]
