"""Task families (docs/task_families.md) and their Gymnasium registration under the ``rkmeta/`` namespace.

Importing this package registers the built-in families; registering twice is a no-op.
"""

from gymnasium.envs.registration import register, registry

from .navigation import Navigation2D, NavigationTwin

__all__ = ["Navigation2D", "NavigationTwin", "NAVIGATION_ID", "LOCOMOTION_IDS", "register_locomotion"]

#: Gymnasium id of the 2D navigation family (horizon 100).
NAVIGATION_ID = "rkmeta/Navigation2D-v0"

if NAVIGATION_ID not in registry:
    register(id=NAVIGATION_ID, entry_point="rkmeta_rl.envs.navigation:Navigation2D", max_episode_steps=100)

from .locomotion import LOCOMOTION_IDS, register_locomotion  # noqa: E402

register_locomotion()
