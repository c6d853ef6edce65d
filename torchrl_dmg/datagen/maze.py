"""Maze-grid utilities shared by the PointMaze and AntMaze data generators.

gymnasium-robotics describes a maze as a list of rows (``maze_map[row][col]``) where ``1`` is
a wall and ``0`` / ``"r"`` / ``"g"`` / ``"c"`` are free cells. The MuJoCo world is centred on
the maze: with ``s = maze_size_scaling``, ``R`` rows and ``C`` columns,

    x = (col + 0.5) * s - C * s / 2        (x grows with the column index)
    y = R * s / 2 - (row + 0.5) * s        (y DEcreases as the row index grows)

which is what ``gymnasium_robotics.envs.maze.maze_v4.Maze.cell_rowcol_to_xy`` /
``cell_xy_to_rowcol`` compute. The scripted data-collection policies need the inverse map and
shortest paths over the grid, which gymnasium-robotics does not provide, hence this module.

Everything here is deterministic (fixed neighbour order for BFS tie-breaking) so a seeded
generator reproduces its data exactly.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import gymnasium as gym
import gymnasium_robotics
import numpy as np
from gymnasium_robotics.envs.maze import maps

Cell = tuple[int, int]
#: Goal radius of gymnasium-robotics' maze envs (reward 1 / success within it).
GOAL_RADIUS = 0.45
#: PD gains of the PointMaze waypoint controller (D4RL maze2d: p_gain 10, d_gain -1)
DEFAULT_KP = 10.0
DEFAULT_KD = 1.0

# Fixed exploration order (up, down, left, right in the grid) so that ties between equally
# short paths are always broken the same way.
_NEIGHBOUR_OFFSETS: tuple[Cell, ...] = ((-1, 0), (1, 0), (0, -1), (0, 1))


def _is_wall(value: int | str) -> bool:
    # gymnasium-robotics compares with ``== 1``; strings ("r", "g", "c") and 0 are free.
    return not isinstance(value, str) and int(value) == 1


class MazeGrid:
    """A gymnasium-robotics maze map with cell/world conversions and shortest paths.

    Args:
        maze_map: rows of cell codes (``1`` wall; ``0``, ``"r"``, ``"g"``, ``"c"`` free), e.g.
            ``gymnasium_robotics.envs.maze.maps.MEDIUM_MAZE``.
        maze_size_scaling: side length of one cell in world units (1 for PointMaze, 4 for
            AntMaze), the same value the environment is built with.
    """

    def __init__(self, maze_map: Sequence[Sequence[int | str]], maze_size_scaling: float = 1.0):
        if len(maze_map) == 0 or len(maze_map[0]) == 0:
            raise ValueError("maze_map must be a non-empty list of rows")
        width = len(maze_map[0])
        if any(len(row) != width for row in maze_map):
            raise ValueError("all rows of maze_map must have the same length")
        self.maze_map: tuple[tuple[int | str, ...], ...] = tuple(tuple(row) for row in maze_map)
        self.scaling = float(maze_size_scaling)
        self.n_rows = len(maze_map)
        self.n_cols = width
        self._free = np.array([[not _is_wall(v) for v in row] for row in maze_map], dtype=bool)
        self._x_center = self.n_cols / 2 * self.scaling
        self._y_center = self.n_rows / 2 * self.scaling
        self._free_cells: tuple[Cell, ...] = tuple(
            (r, c) for r in range(self.n_rows) for c in range(self.n_cols) if self._free[r, c]
        )
        if not self._free_cells:
            raise ValueError("maze_map has no free cell")
        self._free_centres = np.stack([self.cell_to_xy(c) for c in self._free_cells])
        self._centres = np.array(
            [[self.cell_to_xy((r, c)) for c in range(self.n_cols)] for r in range(self.n_rows)]
        )
        # goal cell -> (distance array, next-hop array); filled lazily, one BFS per goal cell.
        self._routes: dict[Cell, tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------------ cells
    @property
    def free_cells(self) -> tuple[Cell, ...]:
        """All free cells in row-major order."""
        return self._free_cells

    def in_bounds(self, cell: Cell) -> bool:
        """Whether ``cell`` lies inside the map (walls included)."""
        r, c = cell
        return 0 <= r < self.n_rows and 0 <= c < self.n_cols

    def is_free(self, cell: Cell) -> bool:
        """Whether ``cell`` is inside the map and not a wall."""
        return self.in_bounds(cell) and bool(self._free[cell[0], cell[1]])

    def cells_with(self, code: int | str) -> list[Cell]:
        """Cells whose map entry equals ``code`` (e.g. ``"g"`` goal cells)."""
        return [
            (r, c)
            for r in range(self.n_rows)
            for c in range(self.n_cols)
            if isinstance(self.maze_map[r][c], str) == isinstance(code, str)
            and self.maze_map[r][c] == code
        ]

    def neighbours(self, cell: Cell) -> list[Cell]:
        """Free 4-connected neighbours of ``cell``, in the fixed BFS order."""
        r, c = cell
        return [(r + dr, c + dc) for dr, dc in _NEIGHBOUR_OFFSETS if self.is_free((r + dr, c + dc))]

    # ------------------------------------------------------------ conversions
    def cell_to_xy(self, cell: Cell) -> np.ndarray:
        """World (x, y) of the centre of ``cell`` = (row, col), as gymnasium-robotics places it."""
        r, c = cell
        x = (c + 0.5) * self.scaling - self._x_center
        y = self._y_center - (r + 0.5) * self.scaling
        return np.array([x, y], dtype=np.float64)

    def xy_to_cell(self, xy: Sequence[float] | np.ndarray) -> Cell:
        """Cell (row, col) containing world point ``xy`` (may be a wall or out of the map)."""
        r = math.floor((self._y_center - float(xy[1])) / self.scaling)
        c = math.floor((float(xy[0]) + self._x_center) / self.scaling)
        return (r, c)

    def nearest_free_cell(self, xy: Sequence[float] | np.ndarray) -> Cell:
        """Free cell containing ``xy``, or the free cell with the closest centre otherwise.

        Used so that planners never start from a wall cell when a body grazes a cell border.
        """
        cell = self.xy_to_cell(xy)
        if self.is_free(cell):
            return cell
        d = np.sum((self._free_centres - np.asarray(xy, dtype=np.float64)[:2]) ** 2, axis=1)
        return self._free_cells[int(np.argmin(d))]

    # ---------------------------------------------------------------- routing
    def _route_to(self, goal: Cell) -> tuple[np.ndarray, np.ndarray]:
        """BFS from ``goal``: distance (in cells) and next-hop cell index for every cell."""
        route = self._routes.get(goal)
        if route is not None:
            return route
        if not self.is_free(goal):
            raise ValueError(f"goal cell {goal} is not a free cell of the maze")
        dist = np.full((self.n_rows, self.n_cols), -1, dtype=np.int64)
        dist[goal] = 0
        queue: deque[Cell] = deque([goal])
        while queue:
            cell = queue.popleft()
            for nb in self.neighbours(cell):
                if dist[nb] < 0:
                    dist[nb] = dist[cell] + 1
                    queue.append(nb)
        # next_hop[r, c] = (row, col) of the neighbour one step closer to the goal.
        next_hop = np.full((self.n_rows, self.n_cols, 2), -1, dtype=np.int64)
        for cell in self._free_cells:
            if cell == goal:
                next_hop[cell] = goal
            elif dist[cell] > 0:
                for nb in self.neighbours(cell):
                    if dist[nb] == dist[cell] - 1:
                        next_hop[cell] = nb
                        break
        self._routes[goal] = (dist, next_hop)
        return dist, next_hop

    def distance(self, start: Cell, goal: Cell) -> int:
        """Shortest-path length in cell moves, or -1 when ``goal`` is unreachable."""
        if not self.is_free(start):
            raise ValueError(f"start cell {start} is not a free cell of the maze")
        return int(self._route_to(goal)[0][start])

    def next_cell(self, start: Cell, goal: Cell) -> Cell:
        """The neighbour of ``start`` on a shortest path to ``goal`` (``goal`` if equal)."""
        if self.distance(start, goal) < 0:
            raise ValueError(f"no path from {start} to {goal}")
        r, c = self._route_to(goal)[1][start]
        return (int(r), int(c))

    def shortest_path(self, start: Cell, goal: Cell) -> list[Cell]:
        """Cells of a shortest 4-connected path from ``start`` to ``goal``, both included."""
        if self.distance(start, goal) < 0:
            raise ValueError(f"no path from {start} to {goal}")
        path = [start]
        while path[-1] != goal:
            path.append(self.next_cell(path[-1], goal))
        return path

    def next_waypoint(
        self, xy: Sequence[float] | np.ndarray, goal_xy: Sequence[float] | np.ndarray
    ) -> np.ndarray:
        """Point to steer towards when travelling from ``xy`` to ``goal_xy`` through the maze.

        The centre of the next cell on the shortest cell path; ``goal_xy`` itself once ``xy``
        is in the goal's cell. Stateless on purpose, so a controller built on it is Markovian
        in (position, goal) and the same function can drive any agent (point or ant).
        """
        cell = self.nearest_free_cell(xy)
        goal_cell = self.nearest_free_cell(goal_xy)
        if cell == goal_cell:
            return np.array((float(goal_xy[0]), float(goal_xy[1])), dtype=np.float64)
        # Hot path of the data generators: index the cached BFS tables directly.
        dist, next_hop = self._route_to(goal_cell)
        if dist[cell] < 0:
            raise ValueError(f"no path from {cell} to {goal_cell}")
        hop = next_hop[cell]
        return self._centres[hop[0], hop[1]].copy()


def maze_map_with_cells(
    maze_map: Sequence[Sequence[int | str]],
    goal: Cell | None = None,
    reset: Cell | None = None,
) -> list[list[int | str]]:
    """Copy of ``maze_map`` with free-cell codes cleared and ``"g"`` / ``"r"`` placed.

    gymnasium-robotics samples goals only from ``"g"``/``"c"`` cells and resets only from
    ``"r"``/``"c"`` cells when any are present, so this pins an evaluation task to one goal cell
    and one start cell (each still jittered uniformly by the environment's position noise).
    The result holds only plain ``int``/``str`` values so that it serialises into an EnvSpec.
    """
    out: list[list[int | str]] = [[1 if _is_wall(v) else 0 for v in row] for row in maze_map]
    for cell, code in ((goal, "g"), (reset, "r")):
        if cell is None:
            continue
        r, c = cell
        if not (0 <= r < len(out) and 0 <= c < len(out[0])) or out[r][c] == 1:
            raise ValueError(f"cell {cell} for {code!r} is not a free cell")
        out[r][c] = code
    return out


def fixed_task_kwargs(maze: str, start: Cell, goal: Cell, max_episode_steps: int) -> dict:
    """``gym.make`` keyword arguments of a gymnasium-robotics maze task with one start and
    one goal cell: sparse reward, continuing task, the goal never moves (JSON-serialisable
    values only, so that they can be recorded as a dataset's env spec)."""
    return {
        "maze_map": maze_map_with_cells(base_maze_map(maze), goal=goal, reset=start),
        "reward_type": "sparse",
        "continuing_task": True,
        "reset_target": False,
        "max_episode_steps": int(max_episode_steps),
    }


def register_maze_envs() -> None:
    """Register gymnasium-robotics' envs (PointMaze, AntMaze) with gymnasium."""
    gym.register_envs(gymnasium_robotics)


def base_maze_map(maze: str) -> list[list[int | str]]:
    """gymnasium-robotics' plain map of ``"umaze"``, ``"medium"`` or ``"large"``."""
    return {"umaze": maps.U_MAZE, "medium": maps.MEDIUM_MAZE, "large": maps.LARGE_MAZE}[
        maze.lower()
    ]


def maze_entry(table: dict[str, tuple], maze: str) -> tuple:
    """``table[maze]`` (case-insensitive), or an error naming the mazes of ``table``."""
    try:
        return table[maze.lower()]
    except KeyError:
        raise ValueError(f"unknown maze {maze!r}; expected one of {sorted(table)}") from None


class WaypointController:
    """Noisy PD waypoint controller for PointMaze (the data-collection behaviour policy).

    Markovian in the observation dict: it reads the position and velocity from
    ``obs["observation"]`` and the goal from ``obs["desired_goal"]``, steers towards
    :meth:`MazeGrid.next_waypoint` with ``a = clip(kp * (waypoint - pos) - kd * vel, -1, 1)``,
    adds ``N(0, noise^2)`` and clips to the action bounds again.

    Args:
        maze_map: gymnasium-robotics maze map (``env.unwrapped.maze.maze_map``).
        maze_size_scaling: cell size (1 for PointMaze).
        kp, kd: PD gains (D4RL maze2d: p_gain 10, d_gain -1, i.e. ``kd = 1`` here).
        noise: Gaussian action-noise std; 0 gives the deterministic expert.
        seed: seed of the noise generator.
    """

    def __init__(
        self,
        maze_map: list[list[int | str]],
        maze_size_scaling: float = 1.0,
        kp: float = DEFAULT_KP,
        kd: float = DEFAULT_KD,
        noise: float = 0.0,
        seed: int | None = None,
        low: float = -1.0,
        high: float = 1.0,
    ):
        self.grid = MazeGrid(maze_map, maze_size_scaling)
        self.kp = float(kp)
        self.kd = float(kd)
        self.noise = float(noise)
        self.low = float(low)
        self.high = float(high)
        self.rng = np.random.default_rng(seed)
        # Noise is drawn in blocks (the same stream as one draw per step, far less overhead).
        self._noise_block = np.empty((0, 2))
        self._noise_i = 0

    def _next_noise(self) -> tuple[float, float]:
        if self._noise_i >= len(self._noise_block):
            self._noise_block = self.rng.standard_normal((4096, 2))
            self._noise_i = 0
        nx, ny = self._noise_block[self._noise_i]
        self._noise_i += 1
        return float(nx), float(ny)

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = obs["observation"]
        px, py, vx, vy = float(state[0]), float(state[1]), float(state[2]), float(state[3])
        wx, wy = self.grid.next_waypoint((px, py), obs["desired_goal"])
        lo, hi = self.low, self.high
        # Scalar arithmetic: np.clip on 2-vectors costs more than the whole PD law.
        ax = min(max(self.kp * (wx - px) - self.kd * vx, lo), hi)
        ay = min(max(self.kp * (wy - py) - self.kd * vy, lo), hi)
        if self.noise > 0:
            nx, ny = self._next_noise()
            ax = min(max(ax + self.noise * nx, lo), hi)
            ay = min(max(ay + self.noise * ny, lo), hi)
        return np.array((ax, ay), dtype=np.float32)
