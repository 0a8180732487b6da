"""dm_control's quadruped with a target-speed objective, registered as the mrcom domain `quadruped`.

Importing this module registers the domain (mrcom imports it in every process: through the
entry point of this package's pyproject.toml, or `--domains_module mrcom_quadruped.domains`).
Quadruped differs from the paper's domains in two ways the entry spells out: its suite module
builds the model with `make_model(...)` instead of `get_model_and_assets()`, and its torso is
an ellipsoid lying along x.
"""

from dm_control.suite import common, quadruped
from dm_control.utils import rewards

from mrcom_lightning.scenarios import Domain, register_domain


class QuadrupedTargetSpeed(quadruped.Move):
    """dm_control's quadruped `run` task with the move term peaking at `target_speed`.

    The suite's reward is one-sided (full credit at any speed above the desired one); a
    target speed needs the two-sided tolerance, bounds (v, v), so that overshooting costs
    reward. The upright factor is kept.
    """

    def __init__(self, target_speed: float, random=None):
        super().__init__(desired_speed=target_speed, random=random)
        self.target_speed = target_speed

    def get_reward(self, physics):
        v = self.target_speed
        move = rewards.tolerance(
            physics.torso_velocity()[0], bounds=(v, v), margin=v / 2, value_at_margin=0.5, sigmoid="linear"
        )
        return quadruped._upright_reward(physics) * move


def quadruped_model():
    """quadruped's flat-floor model (as its `walk`/`run` tasks build it) and the suite's assets."""
    xml = quadruped.make_model(floor_size=None, terrain=False, rangefinders=False, walls_and_ball=False)
    return xml, common.ASSETS


QUADRUPED = register_domain(
    Domain(
        name="quadruped",
        module=quadruped,
        task=QuadrupedTargetSpeed,
        torso_axis=0,  # the body's length lies along x: the ellipsoid's x semi-axis and the hips' x scale
        max_speed=quadruped._RUN_SPEED,  # 5 m/s; target speeds are fractions of it
        control_timestep=quadruped._CONTROL_TIMESTEP,  # 0.02 s
        episode_steps=1000,  # the suite's 20 s time limit
        obs_dim=78,  # egocentric_state 44, torso_velocity 3, torso_upright 1, imu 6, force_torque 24
        act_dim=12,
        model=quadruped_model,  # the module has no get_model_and_assets
    )
)
