"""Local dataset generators (PointMaze, Gym-MuJoCo locomotion, AntMaze), the registry of the
``local/...`` ids they make, the goal-reaching ant task, the SAC behaviour-policy trainer
and the shipped policies. Datasets are published through :mod:`torchrl_dmg.data.local`."""

from torchrl_dmg._compat import drop_adroit_reward_notice

# every generator reaches gymnasium-robotics through this package: its Adroit notice is not
# about any env made here
drop_adroit_reward_notice()
