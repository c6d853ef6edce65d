"""Local dataset generators (PointMaze, Gym-MuJoCo locomotion, AntMaze), the registry of the
``local/...`` ids they make, the goal-reaching ant task, the SAC behaviour-policy trainer
and the shipped policies. Datasets are published through :mod:`torchrl_dmg.data.local`."""
