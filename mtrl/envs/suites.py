"""Task names of the suites beyond DMC and MetaWorld: MyoSuite and Atari (both served by envpool)
and any registered gymnasium id (served one env at a time in Python, the slow path).

Names (``mtrl.envs.available_tasks()`` lists them all):

- ``"myo:<id>"``: a MyoSuite task as envpool spells it, e.g. ``"myo:myoElbowPose1D6MRandom-v0"``
  (envpool 1.2.5 registers 398 MyoSuite tasks, each also under a ``"MyoSuite/"`` alias, hence the
  796 ids; ``"myo:MyoSuite/<id>"`` is accepted too). Observations are envpool's flat float64
  vector cast to float32; actions are muscle activations in [-1, 1]; ``success`` is MyoSuite's
  ``solved`` flag (envpool's ``info["solved"] > 0``); envpool's per-task time limit. Observed
  with envpool 1.2.5: the "...Random-v0" tasks (e.g. myoElbowPose1D6MRandom-v0) return the same
  initial observation whatever the seed and at every reset (envpool does not randomise them);
  mtrl passes the seeds through and does not change that.
- ``"atari:<game>"``: an Atari 2600 game of envpool's ``<Game>-v5`` family, named by its
  snake-case ROM name, e.g. ``"atari:pong"``, ``"atari:space_invaders"``, ``"atari:air_raid"``
  (``"atari:Pong-v5"`` is accepted too). ROMs are bundled with envpool. envpool's defaults are
  kept: frame_skip 4, 84x84 grayscale, frame stack 4, noop_max 30 random no-ops at reset, sticky
  actions (repeat_action_probability) 0.0 (gymnasium's ALE v5 uses 0.25), no reward clipping,
  episodic_life False (an episode is a whole game), 27000 agent steps (108000 frames) time limit.
  See `mtrl.envs.envpool_backend` for the observation layout and the discrete action rule.
- ``"gym:<id>"``: any id in gymnasium's registry (read live: ids registered after importing
  mtrl count), e.g. ``"gym:Pendulum-v1"``; served by
  `mtrl.envs.gym_backend.GymTaskPool` (Python loop over single envs: slow, documented there).
"""

from __future__ import annotations

import difflib
import functools

from mtrl.envs.registry import TaskSpec

SUITE_PREFIXES = ("myo", "atari", "gym")


@functools.lru_cache(maxsize=1)
def _envpool_specs() -> dict[str, tuple]:
    # envpool's registry is a plain dict id -> (module, spec class, kwargs); reading it imports
    # envpool (about a second), so it is done once, lazily. Without envpool (it is a dependency,
    # but a trimmed environment may lack it) its suites list no tasks, so DMC names still resolve
    # and making an envpool task raises envpool's ImportError.
    try:
        from envpool.registration import registry
    except ImportError:
        return {}

    return dict(registry.specs)


@functools.lru_cache(maxsize=1)
def myo_ids() -> tuple[str, ...]:
    """envpool's MyoSuite ids without the "MyoSuite/" alias prefix, in envpool's order."""
    return tuple(i for i, v in _envpool_specs().items()
                 if v[1] == "MyoSuiteEnvSpec" and not i.startswith("MyoSuite/"))


@functools.lru_cache(maxsize=1)
def atari_games() -> dict[str, str]:
    """Snake-case game name ("space_invaders") -> envpool id ("SpaceInvaders-v5")."""
    return {v[2]["task"]: i for i, v in _envpool_specs().items() if v[1] == "AtariEnvSpec"}


def gym_ids() -> tuple[str, ...]:
    """Every id registered in gymnasium now (some need optional packages to be made); read
    live, so ids a user registers after importing mtrl are tasks too. Empty without gymnasium."""
    try:
        import gymnasium
    except ImportError:
        return ()

    return tuple(gymnasium.registry)


def suite_tasks() -> list[str]:
    """Canonical names of the MyoSuite, Atari and gymnasium tasks."""
    return ([f"myo:{i}" for i in myo_ids()] + [f"atari:{g}" for g in atari_games()]
            + [f"gym:{i}" for i in gym_ids()])


def resolve_suite(suite: str, short: str) -> TaskSpec | None:
    """The spec of ``"<suite>:<short>"`` for the suites of this module, or None if unknown.

    For "gym" the ``envpool_id`` field is empty (no envpool) and the gymnasium id is ``short``.
    """
    if suite == "myo":
        short = short.removeprefix("MyoSuite/")
        if short in myo_ids():
            return TaskSpec(f"myo:{short}", "myo", short, ())
    elif suite == "atari":
        games = atari_games()
        by_id = {v: k for k, v in games.items()}
        game = short if short in games else by_id.get(short)
        if game is not None:
            return TaskSpec(f"atari:{game}", "atari", games[game], ())
    elif suite == "gym":
        import gymnasium

        if short in gymnasium.registry:
            return TaskSpec(f"gym:{short}", "gym", "", ())
    return None


def close_suite_names(full: str) -> list[str]:
    """Up to 5 known names of ``full``'s suite that are close to it (difflib)."""
    suite = full.split(":", 1)[0]
    pool = [t for t in suite_tasks() if t.startswith(f"{suite}:")] if suite in SUITE_PREFIXES \
        else []
    if not pool:
        return []
    # Case-insensitive match (gymnasium and envpool ids are CamelCase), mapped back.
    lower = {t.lower(): t for t in pool}
    return [lower[c] for c in difflib.get_close_matches(full.lower(), list(lower), n=5,
                                                        cutoff=0.5)]
