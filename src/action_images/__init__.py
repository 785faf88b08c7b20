"""action-images: robot actions as pixels (Zhen et al., 2026, arXiv 2604.06168).

A 7-DoF end-effector action is drawn as an *action image* per calibrated camera; one video model over multi-view RGB
and action images is then a policy, a world model and an action labeler. See README.md and docs/.
"""

__version__ = "0.1.0"

from action_images.geometry import Camera  # noqa: E402,F401
