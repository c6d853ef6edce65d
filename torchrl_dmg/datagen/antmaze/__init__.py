"""Local AntMaze: D4RL's ant on gymnasium-robotics' mazes (:mod:`.d4rl_ant`), the mazes,
their envs and dataset ids (:mod:`.mazes`), the goal-reaching ant task and its mirror
symmetry (:mod:`.goal_task`), the waypoint navigator that steers the trained ant
(:mod:`.navigator`), the datasets it makes (:mod:`.datasets`) and choosing and shipping
that ant (:mod:`.ant_policy`)."""
