"""Task names: the DeepMind Control and MetaWorld v3 tasks, their envpool ids and obs layouts."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

# dm_control observation keys in dm_control's own order (`task.get_observation` OrderedDict),
# recorded from dm_control 1.0.50 (`suite.load(d, t).observation_spec().keys()`) and checked
# against it in tests/test_envs.py. envpool returns a superset of keys for some tasks, in
# another order; we flatten exactly these keys in exactly this order.
_POS_VEL = ("position", "velocity")
_DOG = ("joint_angles", "joint_velocites", "torso_pelvis_height", "z_projection",
        "torso_com_velocity", "inertial_sensors", "foot_forces", "touch_sensors",
        "actuator_state")
_HUMANOID = ("joint_angles", "head_height", "extremities", "torso_vertical", "com_velocity",
             "velocity")
_QUADRUPED = ("egocentric_state", "torso_velocity", "torso_upright", "imu", "force_torque")
_MANIPULATOR = ("arm_pos", "arm_vel", "touch", "hand_pos", "object_pos", "object_vel",
                "target_pos")
_STACKER = ("arm_pos", "arm_vel", "touch", "hand_pos", "box_pos", "box_vel", "target_pos")
_FINGER_TURN = ("position", "velocity", "touch", "target_position", "dist_to_target")

DMC_OBS_KEYS: dict[str, tuple[str, ...]] = {
    "acrobot-swingup": ("orientations", "velocity"),
    "acrobot-swingup_sparse": ("orientations", "velocity"),
    "ball_in_cup-catch": _POS_VEL,
    "cartpole-balance": _POS_VEL,
    "cartpole-balance_sparse": _POS_VEL,
    "cartpole-swingup": _POS_VEL,
    "cartpole-swingup_sparse": _POS_VEL,
    "cartpole-two_poles": _POS_VEL,
    "cartpole-three_poles": _POS_VEL,
    "cheetah-run": _POS_VEL,
    "dog-stand": _DOG,
    "dog-walk": _DOG,
    "dog-trot": _DOG,
    "dog-run": _DOG,
    "dog-fetch": _DOG + ("ball_state", "target_position"),
    "finger-spin": ("position", "velocity", "touch"),
    "finger-turn_easy": _FINGER_TURN,
    "finger-turn_hard": _FINGER_TURN,
    "fish-upright": ("joint_angles", "upright", "velocity"),
    "fish-swim": ("joint_angles", "upright", "target", "velocity"),
    "hopper-stand": ("position", "velocity", "touch"),
    "hopper-hop": ("position", "velocity", "touch"),
    "humanoid-stand": _HUMANOID,
    "humanoid-walk": _HUMANOID,
    "humanoid-run": _HUMANOID,
    "humanoid-run_pure_state": _POS_VEL,
    "humanoid_CMU-stand": _HUMANOID,
    "humanoid_CMU-walk": _HUMANOID,
    "humanoid_CMU-run": _HUMANOID,
    "manipulator-bring_ball": _MANIPULATOR,
    "manipulator-bring_peg": _MANIPULATOR,
    "manipulator-insert_ball": _MANIPULATOR,
    "manipulator-insert_peg": _MANIPULATOR,
    "pendulum-swingup": ("orientation", "velocity"),
    "point_mass-easy": _POS_VEL,
    "point_mass-hard": _POS_VEL,
    "quadruped-walk": _QUADRUPED,
    "quadruped-run": _QUADRUPED,
    "quadruped-escape": _QUADRUPED + ("origin", "rangefinder"),
    "quadruped-fetch": _QUADRUPED + ("ball_state", "target_position"),
    "reacher-easy": ("position", "to_target", "velocity"),
    "reacher-hard": ("position", "to_target", "velocity"),
    "stacker-stack_2": _STACKER,
    "stacker-stack_4": _STACKER,
    "swimmer-swimmer6": ("joints", "to_target", "body_velocities"),
    "swimmer-swimmer15": ("joints", "to_target", "body_velocities"),
    "walker-stand": ("orientations", "height", "velocity"),
    "walker-walk": ("orientations", "height", "velocity"),
    "walker-run": ("orientations", "height", "velocity"),
}

# MetaWorld v3 task names as MetaWorld spells them (without "-v3"); envpool ids are CamelCase.
METAWORLD_TASKS: tuple[str, ...] = (
    "assembly", "basketball", "bin-picking", "box-close", "button-press", "button-press-topdown",
    "button-press-topdown-wall", "button-press-wall", "coffee-button", "coffee-pull",
    "coffee-push", "dial-turn", "disassemble", "door-close", "door-lock", "door-open",
    "door-unlock", "drawer-close", "drawer-open", "faucet-close", "faucet-open", "hammer",
    "hand-insert", "handle-press", "handle-press-side", "handle-pull", "handle-pull-side",
    "lever-pull", "peg-insert-side", "peg-unplug-side", "pick-out-of-hole", "pick-place",
    "pick-place-wall", "plate-slide", "plate-slide-back", "plate-slide-back-side",
    "plate-slide-side", "push", "push-back", "push-wall", "reach", "reach-wall", "shelf-place",
    "soccer", "stick-pull", "stick-push", "sweep", "sweep-into", "window-close", "window-open",
)


@dataclass(frozen=True)
class TaskSpec:
    """A resolved task name.

    Attributes:
      name: canonical name, "dmc:<domain>-<task>", "metaworld:<task>", "myo:<id>",
        "atari:<game>" or "gym:<gymnasium id>" (see mtrl/envs/suites.py).
      suite: "dmc", "metaworld", "myo", "atari" or "gym".
      envpool_id: the envpool environment id for this task ("" for "gym" tasks).
      obs_keys: for dict observations, the keys to flatten in order (empty for flat observations).
    """

    name: str
    suite: str
    envpool_id: str
    obs_keys: tuple[str, ...]

    @property
    def short(self) -> str:
        """The name without the suite prefix ("cheetah-run")."""
        return self.name.split(":", 1)[1]


def _camel(part: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[_\-]", part))


def available_tasks() -> list[str]:
    """All task names `mtrl.envs.make` accepts (canonical, with suite prefix)."""
    from mtrl.envs.suites import suite_tasks  # MyoSuite, Atari, gymnasium (mtrl/envs/suites.py)

    return ([f"dmc:{n}" for n in DMC_OBS_KEYS] + [f"metaworld:{n}" for n in METAWORLD_TASKS]
            + suite_tasks())


def resolve(name: str) -> TaskSpec:
    """Resolve a task name ("dmc:cheetah-run", bare "cheetah-run", "metaworld:reach").

    Raises:
      ValueError: unknown name; the message lists the closest known names.
    """
    if not isinstance(name, str):
        raise ValueError(f"task name must be a str, got {type(name).__name__}")
    full = name if ":" in name else f"dmc:{name}"
    suite, short = full.split(":", 1)
    if suite == "metaworld" and short.endswith("-v3"):
        short = short[: -len("-v3")]
    if suite == "dmc" and short in DMC_OBS_KEYS:
        domain, task = short.split("-", 1)
        return TaskSpec(f"dmc:{short}", "dmc", f"{_camel(domain)}{_camel(task)}-v1",
                        DMC_OBS_KEYS[short])
    if suite == "metaworld" and short in METAWORLD_TASKS:
        return TaskSpec(f"metaworld:{short}", "metaworld", f"MetaWorld/{_camel(short)}-v3", ())
    from mtrl.envs.suites import SUITE_PREFIXES, close_suite_names, resolve_suite

    if suite in SUITE_PREFIXES:
        spec = resolve_suite(suite, short)
        if spec is not None:
            return spec
        close = close_suite_names(full)
    else:
        close = difflib.get_close_matches(full, available_tasks(), n=5, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise ValueError(
        f"unknown task {name!r}{hint}. Known suites: 'dmc:<domain>-<task>' "
        f"({len(DMC_OBS_KEYS)} tasks), 'metaworld:<task>' ({len(METAWORLD_TASKS)} tasks), "
        "'myo:<MyoSuite id>', 'atari:<game>', 'gym:<gymnasium id>'; see mtrl.envs.available_tasks()"
    )
