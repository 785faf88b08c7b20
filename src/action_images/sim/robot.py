"""End-effector control of the arm through a mocap weld.

The policy gives an absolute tool pose; the mocap body the hand is welded to is moved toward it, but never more than
``MAX_STEP_POS`` / ``MAX_STEP_ROT`` away from where the hand actually is. That bounds the weld force when the target
is unreachable or blocked (no wind-up, no crushing) and caps the speed at ``MAX_STEP_POS * fps``.
"""

from __future__ import annotations

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from action_images.geometry import matrix_to_pose, topdown_rotation, validate_poses
from action_images.sim import scene

MAX_STEP_POS = 0.06   # metres the mocap may lead the hand per control step
MAX_STEP_ROT = 0.5    # radians the mocap may lead the hand per control step
START_POS = np.array([-0.05, 0.0, 0.2])
START_YAW = 0.0
SETTLE_STEPS = 500    # physics steps (1 s) for the weld to pull the arm from home to another start pose
QUAT_MIN_NORM = 1e-6  # action quaternions shorter than this keep the current tool orientation


def quat_down(yaw: float = 0.0) -> np.ndarray:
    """Scalar-last quaternion of a top-down tool (+z approach = world -z) with its +x axis at ``yaw`` in the xy plane."""
    return Rotation.from_matrix(topdown_rotation(yaw)).as_quat(canonical=True)


def wrap_yaw_90(yaw: float) -> float:
    """A cube's yaw modulo its 90° symmetry, in [-45°, 45°): the gripper yaw needing the least rotation."""
    return float((yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)


class Arm:
    """Reads the tool pose and applies 8-D pose targets to one MjModel/MjData pair."""

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData):
        self.model, self.data = model, data
        self.hand = model.body("hand").id
        self.tcp = model.site("tcp").id
        self.arm_qadr = [model.jnt_qposadr[model.joint(f"j{i}").id] for i in range(1, 8)]
        self.finger_qadr = [model.jnt_qposadr[model.joint(n).id] for n in ("finger_l", "finger_r")]
        self.finger_act = [model.actuator(n).id for n in ("finger_l", "finger_r")]
        self.home_qpos = self._settle_home()

    def _settle_home(self) -> np.ndarray:
        """Arm joint angles holding the start pose, found once by letting the weld pull the arm there."""
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[self.arm_qadr] = scene.HOME_QPOS
        self.set_mocap(START_POS, quat_down(START_YAW))
        d.ctrl[self.finger_act] = scene.FINGER_RANGE
        mujoco.mj_step(m, d, nstep=SETTLE_STEPS)
        return d.qpos[self.arm_qadr].copy()

    def reset(self, start_offset: np.ndarray | None = None) -> None:
        """Arm at its start pose, gripper open, zero velocities (call after mj_resetData, before the objects are
        placed). ``start_offset``: the hand starts that far (metres, xyz) from ``START_POS`` instead, still pointing
        down: the weld pulls the arm there from the home pose (``SETTLE_STEPS`` physics steps, contacts off), then
        everything but the arm's joint angles is reset as by mj_resetData."""
        d = self.data
        d.qpos[self.arm_qadr] = self.home_qpos
        d.qpos[self.finger_qadr] = scene.FINGER_RANGE
        d.ctrl[self.finger_act] = scene.FINGER_RANGE
        start = START_POS if start_offset is None else START_POS + np.asarray(start_offset, dtype=np.float64)
        self.set_mocap(start, quat_down(START_YAW))
        if start_offset is not None:
            # contacts off, so nothing in the scene stops the arm or is moved by it; then every other state is reset
            m = self.model
            flags = m.opt.disableflags
            m.opt.disableflags = flags | mujoco.mjtDisableBit.mjDSBL_CONTACT
            try:
                mujoco.mj_step(m, d, nstep=SETTLE_STEPS)
            finally:
                m.opt.disableflags = flags
            arm = d.qpos[self.arm_qadr].copy()
            mujoco.mj_resetData(m, d)
            d.qpos[self.arm_qadr] = arm
            d.qpos[self.finger_qadr] = scene.FINGER_RANGE
            d.ctrl[self.finger_act] = scene.FINGER_RANGE
            self.set_mocap(start, quat_down(START_YAW))

    def set_mocap(self, pos: np.ndarray, quat_xyzw: np.ndarray) -> None:
        self.data.mocap_pos[0] = pos
        self.data.mocap_quat[0] = np.roll(quat_xyzw, 1)  # MuJoCo is scalar-first

    # ---- state -------------------------------------------------------------------------------------------------------
    def opening(self) -> float:
        """Measured gripper openness in [0, 1] (jaw width / max width); 1 = fully open."""
        q = self.data.qpos[self.finger_qadr]
        return float(np.clip(q.mean() / scene.FINGER_RANGE, 0.0, 1.0))

    def tcp_pos(self) -> np.ndarray:
        return self.data.site_xpos[self.tcp].copy()

    def tcp_rot(self) -> np.ndarray:
        return self.data.site_xmat[self.tcp].reshape(3, 3).copy()

    def tcp_quat(self) -> np.ndarray:
        """Current tool orientation, scalar-last."""
        return Rotation.from_matrix(self.tcp_rot()).as_quat(canonical=True)

    def ee_pose(self) -> np.ndarray:
        """Current ``[x,y,z,qx,qy,qz,qw,g]`` of the tool frame, g measured from the fingers."""
        return matrix_to_pose(self.tcp_pos(), self.tcp_rot(), self.opening())

    # ---- control -----------------------------------------------------------------------------------------------------
    def clip_target(self, target: np.ndarray) -> np.ndarray:
        """Validate, normalise the quaternion and clip the position to the workspace.

        ``ValueError`` on a shape other than (8,), NaN/inf or g outside [0, 1]. Any quaternion of norm at least
        ``QUAT_MIN_NORM`` is divided by its norm (so every point of the action space is a valid command); a shorter
        one carries no usable direction and means "keep the tool's current orientation".
        """
        target = np.asarray(target, dtype=np.float64)
        if target.shape != (8,):
            raise ValueError(f"action must have shape (8,) = [x,y,z,qx,qy,qz,qw,g]; got shape {target.shape}")
        if not np.isfinite(target).all():
            raise ValueError(f"action contains NaN or inf: {target.tolist()}")
        target = target.copy()
        n = np.linalg.norm(target[3:7])
        target[3:7] = target[3:7] / n if n >= QUAT_MIN_NORM else self.tcp_quat()
        target = validate_poses(target, "action")
        target[:3] = np.clip(target[:3], scene.WORKSPACE_LOW, scene.WORKSPACE_HIGH)
        return target

    def apply(self, target: np.ndarray) -> np.ndarray:
        """Move the mocap toward a validated, normalised, clipped target (kept near the hand) and set the fingers; returns it."""
        target = self.clip_target(target)
        p = self.tcp_pos()
        delta = target[:3] - p
        n = np.linalg.norm(delta)
        if n > MAX_STEP_POS:
            delta *= MAX_STEP_POS / n
        R_hand = Rotation.from_matrix(self.tcp_rot())
        rel = (Rotation.from_quat(target[3:7]) * R_hand.inv()).as_rotvec()
        a = np.linalg.norm(rel)
        if a > MAX_STEP_ROT:
            rel *= MAX_STEP_ROT / a
        q = (Rotation.from_rotvec(rel) * R_hand).as_quat()
        self.set_mocap(p + delta, q)
        self.data.ctrl[self.finger_act] = target[7] * scene.FINGER_RANGE
        return target
