"""A goal-reaching ant: the AntMaze ant in open space, walking to a nearby target.

D4RL made its AntMaze datasets by steering a pretrained goal-reaching ant along the
waypoints of a maze planner. That policy was never published in a usable form, so this
project trains its own with the SAC of :mod:`torchrl_dmg.datagen.behaviour` on the task defined
here, then drives it through mazes with :mod:`torchrl_dmg.datagen.antmaze.navigator`.

The task (registered as ``torchrl_dmg/AntGoal-v2``, :class:`AntGoalEnv`):

* Body and observation layout: the local AntMaze ant (:mod:`torchrl_dmg.datagen.antmaze.d4rl_ant`:
  Gymnasium's ant body with D4RL's actuation, ``gear 30``, ``dt = 0.1``; 27-dim
  ``observation`` = joint positions without the torso's x, y, then velocities; 8 actions
  in [-1, 1]), built by the AntMaze env itself on an open arena (:data:`OPEN_ARENA`: 7 x 7
  free cells of 4 units inside one ring of walls), so the learnt controller sees exactly
  the states of the maze tasks.
* Target: a point ``target_dist`` away from the ant (``target_dist`` uniform in
  ``[min_dist, max_dist]``, clipped to the arena), in a uniformly random direction, or, with
  probability ``forward_fraction`` (0.5), within ``forward_cone`` (30 degrees) of the ant's
  heading; when the ant's xy comes within ``reach_radius`` of it, a new one is drawn, so one
  episode chains several targets as the waypoint navigator does. The targets ahead are
  what lets SAC find a gait at all: with directions uniform only, walking any one way earns
  nothing on average, and SAC does not learn to walk.
* Policy input (29 dims, :func:`policy_observation`): the 27-dim ant observation, then the
  target relative to the ant **in the ant's heading frame** (rotated by minus the torso's
  yaw), its length clipped to :data:`MAX_REL_DIST` (6). The heading frame makes "walk towards the
  target" the same problem whatever way the ant faces.
* Reward: Gymnasium Ant-v4's with the forward velocity replaced by the velocity towards the
  target: ``(d_prev - d) / dt + healthy_reward - ctrl_cost_weight * |a|^2`` (healthy
  reward 1 only while the torso height is in range; control cost 0.1 instead of Ant-v4's
  0.5, so that a random policy's control cost does not exceed the healthy reward and
  falling early never pays).
* Episodes terminate when the torso height leaves ``healthy_z_range`` (Ant-v4's (0.2, 1.0):
  fallen through or jumping) or when the ant lies on its back (:func:`is_flipped`): a
  flipped ant's torso rests at z ~ 0.27, inside Ant-v4's range, where Ant-v4's rule alone
  would go on paying it the healthy reward for lying there. Episodes are truncated after
  ``max_episode_steps`` (500).
* Symmetry: the ant, its physics and the reward are symmetric under the reflection
  y -> -y, so every transition has an equally valid mirror image
  (:func:`mirror_transitions`, which SAC's ``mirror_augment`` adds to its replay buffer).

:func:`torchrl_dmg.datagen.antmaze.ant_policy.goal_reaching_success` measures the
controller: single targets at a given distance range, success when reached within a step
budget.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np

from torchrl_dmg.datagen.antmaze.d4rl_ant import D4RLAntMazeEnv

__all__ = [
    "ANTGOAL_ID",
    "RETIRED_ANTGOAL_IDS",
    "ANTGOAL_UNIFORM_ID",
    "OPEN_ARENA",
    "AntGoalEnv",
    "MAX_REL_DIST",
    "heading_frame",
    "policy_observation",
    "register_antgoal",
    "mirror_observation",
    "mirror_action",
    "mirror_transitions",
]

ANTGOAL_ID = "torchrl_dmg/AntGoal-v2"
#: AntGoal-v2 with every target in a uniformly random direction (``forward_fraction=0``):
#: more turning, for going on training an ant that already walks (a fresh ant needs the
#: targets ahead to find a gait at all)
ANTGOAL_UNIFORM_ID = "torchrl_dmg/AntGoalUniform-v2"
#: ids of the gear-150 ant (retired): a clear error names the new ones
RETIRED_ANTGOAL_IDS = (
    "torchrl_dmg/AntGoal-v0",
    "torchrl_dmg/AntGoal-v1",
    "torchrl_dmg/AntGoalUniform-v1",
)

#: 9 x 9 cells: a ring of walls around 7 x 7 free cells (28 x 28 world units at scaling 4).
OPEN_ARENA: list[list[int]] = [[1] * 9] + [[1] + [0] * 7 + [1] for _ in range(7)] + [[1] * 9]
_ARENA_CENTRE_CELL = (4, 4)
_ARENA_HALF_WIDTH = 3.5 * 4.0  # free half-width around the centre (world units)
_WALL_MARGIN = 1.5  # targets stay this far from the arena walls

#: Observation dims of the ant (AntMaze ``observation``) and of the policy input.
ANT_OBS_DIM = 27
POLICY_OBS_DIM = ANT_OBS_DIM + 2

#: Length at which the policy's relative target vector is clipped (a waypoint further away
#: is seen as this far in its direction).
MAX_REL_DIST = 6.0


def torso_yaw(ant_obs: np.ndarray) -> np.ndarray:
    """Yaw (rad) of the torso from the AntMaze ``observation`` (its entries 1..4 are the
    torso quaternion ``w, x, y, z``). Works on ``[..., 27]`` arrays."""
    w, x, y, z = (ant_obs[..., i] for i in range(1, 5))
    return np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def torso_upright(ant_obs: np.ndarray) -> np.ndarray:
    """z component of the torso's up axis (1 standing level, -1 on its back), from the
    torso quaternion in ``ant_obs[..., 1:5]``."""
    x, y = ant_obs[..., 2], ant_obs[..., 3]
    return 1.0 - 2.0 * (x * x + y * y)


def is_flipped(ant_obs: np.ndarray) -> np.ndarray:
    """The ant lies on its back or side (torso up axis below the horizontal): it cannot
    get up again."""
    return torso_upright(ant_obs) < 0.0


def heading_frame(vec_xy: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """World-frame xy vectors ``[..., 2]`` expressed in the frame rotated by ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    x, y = vec_xy[..., 0], vec_xy[..., 1]
    return np.stack([c * x + s * y, -s * x + c * y], axis=-1)


def policy_observation(ant_obs: np.ndarray, xy: np.ndarray, target_xy: np.ndarray) -> np.ndarray:
    """Input of the goal-reaching policy: ``[ant_obs, target - xy in the heading frame]``,
    the relative vector's length clipped to :data:`MAX_REL_DIST`. Batched over leading
    dims."""
    ant_obs = np.asarray(ant_obs, dtype=np.float64)
    rel = np.asarray(target_xy, dtype=np.float64) - np.asarray(xy, dtype=np.float64)
    norm = np.linalg.norm(rel, axis=-1, keepdims=True)
    rel = rel * np.minimum(1.0, MAX_REL_DIST / np.maximum(norm, 1e-8))
    rel = heading_frame(rel, torso_yaw(ant_obs))
    return np.concatenate([ant_obs, rel], axis=-1).astype(np.float32)


# ------------------------------------------------------------------ mirror symmetry
# The ant is symmetric under the reflection y -> -y of its torso frame: leg 1 (at +x, +y)
# <-> leg 4 (+x, -y) and leg 2 (-x, +y) <-> leg 3 (-x, -y); a hip angle (axis z) changes
# sign, an ankle angle keeps it (its axis is reflected too). So is the physics (floor,
# gravity) and the AntGoal reward, so every transition has an equally valid mirror image
# (SAC's ``mirror_augment``: twice the data, and no side to turn to is favoured). Tested
# against MuJoCo: mirrored state + mirrored actions give the mirrored trajectory
# (tests/test_antmaze_navigator.py).
#: AntMaze ``observation`` (27): z, quaternion w x y z, joints hip_1 ankle_1 ... hip_4
#: ankle_4, linear velocity, angular velocity, joint velocities; then (policy input) the
#: target in the heading frame. ``mirrored[..., i] = obs[..., OBS_MIRROR_INDEX[i]] *
#: OBS_MIRROR_SIGN[i]``.
_JOINTS_MIRROR = [6, 7, 4, 5, 2, 3, 0, 1]  # hip_1 <- hip_4, ankle_1 <- ankle_4, ...
_JOINTS_SIGN = [-1.0, 1.0] * 4
OBS_MIRROR_INDEX = (
    [0, 1, 2, 3, 4]
    + [5 + j for j in _JOINTS_MIRROR]
    + [13, 14, 15, 16, 17, 18]
    + [19 + j for j in _JOINTS_MIRROR]
    + [27, 28]
)
OBS_MIRROR_SIGN = (
    [1.0, 1.0, -1.0, 1.0, -1.0]  # quaternion: w, -x, y, -z
    + _JOINTS_SIGN
    + [1.0, -1.0, 1.0, -1.0, 1.0, -1.0]  # v: x, -y, z; angular velocity: -x, y, -z
    + _JOINTS_SIGN
    + [1.0, -1.0]  # target: x, -y
)
#: Actions (motor order hip_4 ankle_4 hip_1 ankle_1 hip_2 ankle_2 hip_3 ankle_3).
ACTION_MIRROR_INDEX = [2, 3, 0, 1, 6, 7, 4, 5]
ACTION_MIRROR_SIGN = [-1.0, 1.0] * 4


def mirror_observation(obs):
    """AntMaze observations ``[..., 27]`` or policy inputs ``[..., 29]`` (numpy or torch)
    of the world reflected in its x-z plane (y -> -y; the ant's yaw changes sign)."""
    n = obs.shape[-1]
    sign = OBS_MIRROR_SIGN[:n]
    if isinstance(obs, np.ndarray):
        return obs[..., OBS_MIRROR_INDEX[:n]] * np.asarray(sign, dtype=obs.dtype)
    return obs[..., OBS_MIRROR_INDEX[:n]] * obs.new_tensor(sign)


def mirror_action(action):
    """Ant actions ``[..., 8]`` (numpy or torch) of the reflected world."""
    if isinstance(action, np.ndarray):
        return action[..., ACTION_MIRROR_INDEX] * np.asarray(ACTION_MIRROR_SIGN, action.dtype)
    return action[..., ACTION_MIRROR_INDEX] * action.new_tensor(ACTION_MIRROR_SIGN)


def mirror_transitions(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The mirror images of AntGoal transitions (rows of ``observation``, ``action``,
    ``next_observation``, ...): observations and actions mirrored, reward, termination and
    truncation unchanged (they are mirror-invariant)."""
    return {
        **rows,
        "observation": mirror_observation(rows["observation"]),
        "next_observation": mirror_observation(rows["next_observation"]),
        "action": mirror_action(rows["action"]),
    }


class AntGoalEnv(gym.Env):
    """The AntMaze ant in an open arena, rewarded for walking to random nearby targets.

    See the module docstring for the task. ``reset(seed=...)`` seeds both the ant's start
    jitter and the targets.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        min_dist: float = 1.0,
        max_dist: float = 6.0,
        reach_radius: float = 0.5,
        healthy_reward: float = 1.0,
        ctrl_cost_weight: float = 0.1,
        healthy_z_range: tuple[float, float] = (0.2, 1.0),
        forward_fraction: float = 0.5,
        forward_cone: float = math.pi / 6,
        terminate_when_flipped: bool = True,
    ) -> None:
        if not 0 < min_dist <= max_dist:
            raise ValueError(f"need 0 < min_dist <= max_dist, got {min_dist}, {max_dist}")
        if not 0.0 <= forward_fraction <= 1.0:
            raise ValueError(f"forward_fraction must be in [0, 1], got {forward_fraction}")
        self._maze = D4RLAntMazeEnv(maze_map=OPEN_ARENA, continuing_task=True, reward_type="sparse")
        self.min_dist, self.max_dist = float(min_dist), float(max_dist)
        self.reach_radius = float(reach_radius)
        self.healthy_reward = float(healthy_reward)
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        self.healthy_z_range = (float(healthy_z_range[0]), float(healthy_z_range[1]))
        self.forward_fraction, self.forward_cone = float(forward_fraction), float(forward_cone)
        self.terminate_when_flipped = bool(terminate_when_flipped)
        self.dt = float(self._maze.ant_env.dt)
        self.action_space = self._maze.action_space
        self.observation_space = gym.spaces.Box(
            -np.inf, np.inf, shape=(POLICY_OBS_DIM,), dtype=np.float32
        )
        self._centre = self._maze.maze.cell_rowcol_to_xy(np.array(_ARENA_CENTRE_CELL))
        self._rng = np.random.default_rng()
        self.target = np.zeros(2)
        self.targets_reached = 0
        self._ant_obs = np.zeros(ANT_OBS_DIM)
        self._xy = np.zeros(2)

    # -------------------------------------------------------------- targets
    def sample_target(self, xy: np.ndarray) -> np.ndarray:
        """A target ``U(min_dist, max_dist)`` away from ``xy`` (ahead of the ant with
        probability ``forward_fraction``, else in a uniform direction), clipped to stay
        ``_WALL_MARGIN`` inside the arena."""
        if self._rng.uniform() < self.forward_fraction:
            yaw = float(torso_yaw(self._ant_obs))
            angle = yaw + self._rng.uniform(-self.forward_cone, self.forward_cone)
        else:
            angle = self._rng.uniform(-math.pi, math.pi)
        dist = self._rng.uniform(self.min_dist, self.max_dist)
        target = xy + dist * np.array([math.cos(angle), math.sin(angle)])
        lim = _ARENA_HALF_WIDTH - _WALL_MARGIN
        return np.clip(target, self._centre - lim, self._centre + lim)

    def _obs(self) -> np.ndarray:
        return policy_observation(self._ant_obs, self._xy, self.target)

    # -------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        obs, _ = self._maze.reset(seed=seed, options={"reset_cell": np.array(_ARENA_CENTRE_CELL)})
        self._ant_obs, self._xy = obs["observation"], obs["achieved_goal"]
        self.target = self.sample_target(self._xy)
        self.targets_reached = 0
        return self._obs(), {"target": self.target.copy(), "targets_reached": 0}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        d_prev = float(np.linalg.norm(self.target - self._xy))
        obs, _, _, _, _ = self._maze.step(action)
        self._ant_obs, self._xy = obs["observation"], obs["achieved_goal"]
        d = float(np.linalg.norm(self.target - self._xy))
        z = float(self._ant_obs[0])
        healthy = self.healthy_z_range[0] <= z <= self.healthy_z_range[1]
        if self.terminate_when_flipped and is_flipped(self._ant_obs):
            healthy = False
        reward = (
            (d_prev - d) / self.dt
            + (self.healthy_reward if healthy else 0.0)
            - self.ctrl_cost_weight * float(np.sum(action * action))
        )
        reached = d <= self.reach_radius
        if reached:
            self.targets_reached += 1
            self.target = self.sample_target(self._xy)
        info = {
            "target": self.target.copy(),
            "reached": reached,
            "targets_reached": self.targets_reached,
            "distance": d,
        }
        return self._obs(), float(reward), not healthy, False, info

    def close(self) -> None:
        self._maze.close()


def register_antgoal() -> None:
    """Register :data:`ANTGOAL_ID` (a flipped ant ends the episode) and
    :data:`ANTGOAL_UNIFORM_ID` (targets in uniform directions only) with Gymnasium
    (idempotent)."""
    if ANTGOAL_ID not in gym.registry:
        gym.register(ANTGOAL_ID, entry_point=AntGoalEnv, max_episode_steps=500)
    if ANTGOAL_UNIFORM_ID not in gym.registry:
        gym.register(
            ANTGOAL_UNIFORM_ID,
            entry_point=AntGoalEnv,
            max_episode_steps=500,
            kwargs={"forward_fraction": 0.0},
        )
