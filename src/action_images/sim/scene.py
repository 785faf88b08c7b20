"""MJCF for the tabletop scene: table, a 7-joint arm with a parallel gripper, lights, static cameras and rig slots.

Everything is primitives generated as a string, so the benchmark needs no downloads. World frame: right-handed,
z up, metres; the table top is the plane z = 0 and the robot base stands at ``BASE_POS``.

The hand body's origin *is* the tool centre point (TCP, between the finger pads) and its axes are the tool frame of
geometry.py (+z approach, +x "up", fingers close along ±y), so a pose target maps to the mocap body with no offset.
"""

from __future__ import annotations

import numpy as np

from action_images.geometry import Camera

BASE_POS = np.array([-0.45, 0.0, 0.0])
# TCP workspace (metres); targets are clipped to it. z_min keeps the fingertips (1 cm below the TCP) off the table.
WORKSPACE_LOW = np.array([-0.30, -0.38, 0.012])
WORKSPACE_HIGH = np.array([0.32, 0.38, 0.45])
# start_jitter's bound (metres): the hand starts inside the workspace, 14 cm or more above the table
MAX_START_JITTER = 0.12
FINGER_RANGE = 0.04          # per-finger travel; g = 1 opens the jaw to 2 * FINGER_RANGE = 8 cm
FINGER_TIP_BELOW_TCP = 0.01  # fingertips extend this far past the TCP along +z
HOME_QPOS = np.radians([0.0, 11.3, 0.0, 110.9, 0.0, 57.8, 180.0])  # TCP ~(-0.05, 0, 0.22), pointing down

# name -> (eye, target, fovy_deg): static views of the workspace centre
CAMERA_SPECS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], float]] = {
    "front": ((0.62, 0.0, 0.42), (-0.02, 0.0, 0.12), 50.0),
    "left": ((0.12, 0.58, 0.42), (-0.02, 0.0, 0.11), 50.0),
    "right": ((0.12, -0.58, 0.42), (-0.02, 0.0, 0.11), 50.0),
    "top": ((0.50, 0.0, 0.80), (0.0, 0.0, 0.0), 45.0),
}
WRIST_CAMERA = ((0.1, 0.0, -0.11), (0.0, 0.0, 0.06), 75.0)  # in the tool frame; image up = tool +x
CAMERA_NAMES = tuple(CAMERA_SPECS) + ("wrist",)
# Spare world cameras that a calibrated rig is placed in (sim/rig.py); they start at the front camera's pose.
RIG_SLOTS = 8
RIG_SLOT_NAMES = tuple(f"rig{i}" for i in range(RIG_SLOTS))

# Named camera sets: the one place the other modules take their default views from.
CAMERA_SETS: dict[str, tuple[str, ...]] = {
    "all_static": ("front", "left", "right", "top"),  # make_env's and collection's default
    "eval": ("front", "left", "right"),               # closed-loop evaluation's default
    "policy": ("left", "right"),                      # the demo's policy views (front hides the gripper behind
                                                      # the cabinet)
    "all": ("front", "left", "right", "top", "wrist"),
}


def _fmt(v) -> str:
    return " ".join(f"{float(x):.6g}" for x in np.ravel(v))


def camera_xml(name: str, eye, target, fovy: float, up=(0.0, 0.0, 1.0)) -> str:
    """A fixed MuJoCo camera looking from ``eye`` at ``target`` (built with geometry.Camera.look_at)."""
    cam = Camera.look_at(eye, target, fovy, 64, 64, up=up)
    R_world_cam = cam.T_world_cam[:3, :3]  # OpenCV axes; MuJoCo's camera has y up and looks along -z
    xyaxes = np.concatenate([R_world_cam[:, 0], -R_world_cam[:, 1]])
    return f'<camera name="{name}" mode="fixed" pos="{_fmt(eye)}" xyaxes="{_fmt(xyaxes)}" fovy="{fovy}"/>'


def robot_xml() -> str:
    """The arm (visual-only links, gravity compensated) ending in the collidable hand and fingers."""
    link = 'contype="0" conaffinity="0" group="1" material="arm"'
    joint = 'armature="0.1" damping="4" stiffness="3"'
    refs = [f'springref="{np.degrees(q):.3f}"' for q in HOME_QPOS]
    fr = FINGER_RANGE
    finger = ('type="box" size="0.01 0.006 0.035" friction="1.5 0.01 0.0002" condim="4" '
              'solref="0.004 1" material="finger"')
    return f"""
    <body name="base" pos="{_fmt(BASE_POS)}">
      <geom type="cylinder" size="0.08 0.03" pos="0 0 0.03" {link}/>
      <body name="link1" gravcomp="1">
        <joint name="j1" axis="0 0 1" {joint} {refs[0]}/>
        <geom type="capsule" fromto="0 0 0.03 0 0 0.18" size="0.05" {link}/>
        <body name="link2" pos="0 0 0.18" gravcomp="1">
          <joint name="j2" axis="0 1 0" {joint} {refs[1]}/>
          <geom type="sphere" size="0.06" {link}/>
          <body name="link3" gravcomp="1">
            <joint name="j3" axis="0 0 1" {joint} {refs[2]}/>
            <geom type="capsule" fromto="0 0 0 0 0 0.4" size="0.045" {link}/>
            <body name="link4" pos="0 0 0.4" gravcomp="1">
              <joint name="j4" axis="0 1 0" {joint} {refs[3]}/>
              <geom type="sphere" size="0.05" {link}/>
              <body name="link5" gravcomp="1">
                <joint name="j5" axis="0 0 1" {joint} {refs[4]}/>
                <geom type="capsule" fromto="0 0 0 0 0 0.38" size="0.04" {link}/>
                <body name="link6" pos="0 0 0.38" gravcomp="1">
                  <joint name="j6" axis="0 1 0" {joint} {refs[5]}/>
                  <geom type="sphere" size="0.045" {link}/>
                  <body name="link7" gravcomp="1">
                    <joint name="j7" axis="0 0 1" {joint} {refs[6]}/>
                    <geom type="cylinder" fromto="0 0 0 0 0 0.06" size="0.035" {link}/>
                    <body name="hand" pos="0 0 0.15" gravcomp="1">
                      <site name="tcp" size="0.004" rgba="1 0 0 0" group="4"/>
                      <geom name="tcp_marker" type="sphere" size="0.012" group="5" contype="0" conaffinity="0"
                            density="0" rgba="1 0 0 1"/>
                      {camera_xml("wrist", *WRIST_CAMERA, up=(1.0, 0.0, 0.0))}
                      <geom name="palm" type="box" pos="0 0 -0.075" size="0.025 0.065 0.015" material="hand"/>
                      <geom name="up_marker" type="box" pos="0.028 0 -0.075" size="0.004 0.02 0.008"
                            contype="0" conaffinity="0" material="marker"/>
                      <body name="finger_l" gravcomp="1">
                        <joint name="finger_l" type="slide" axis="0 1 0" range="0 {fr}" damping="2" armature="0.01"/>
                        <geom name="finger_l" pos="0 0.006 -0.025" {finger}/>
                      </body>
                      <body name="finger_r" gravcomp="1">
                        <joint name="finger_r" type="slide" axis="0 -1 0" range="0 {fr}" damping="2" armature="0.01"/>
                        <geom name="finger_r" pos="0 -0.006 -0.025" {finger}/>
                      </body>
                    </body>
                  </body>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>
    <body name="target_mocap" mocap="true"/>"""


def scene_xml(task_worldbody: str = "", task_extra: str = "", max_image_size: int = 640) -> str:
    """The full model: scene + robot + a task's bodies (``task_worldbody``) and top-level elements (``task_extra``)."""
    cams = "\n    ".join([camera_xml(n, *spec) for n, spec in CAMERA_SPECS.items()]
                          + [camera_xml(n, *CAMERA_SPECS["front"]) for n in RIG_SLOT_NAMES])
    off = max(640, int(max_image_size))
    return f"""<mujoco model="action_images_tabletop">
  <compiler angle="degree" autolimits="true"/>
  <option timestep="0.002" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual>
    <global offwidth="{off}" offheight="{off}"/>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.4 0.4 0.4" specular="0 0 0"/>
  </visual>
  <asset>
    <material name="table" rgba="0.62 0.52 0.42 1"/>
    <material name="floor" rgba="0.25 0.27 0.3 1"/>
    <material name="arm" rgba="0.85 0.85 0.88 1"/>
    <material name="hand" rgba="0.2 0.2 0.22 1"/>
    <material name="finger" rgba="0.35 0.35 0.38 1"/>
    <material name="marker" rgba="0.9 0.5 0.1 1"/>
  </asset>
  <worldbody>
    <light name="sun" directional="true" pos="0 0 2" dir="0.2 0.3 -1" diffuse="0.4 0.4 0.4" specular="0 0 0" castshadow="false"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="3 3 0.1" material="floor" contype="0" conaffinity="0"/>
    <geom name="table" type="box" pos="-0.1 0 -0.02" size="0.7 0.6 0.02" material="table" friction="0.8 0.005 0.0001"/>
    {cams}
    {robot_xml()}
    {task_worldbody}
  </worldbody>
  <contact>
    <exclude body1="finger_l" body2="finger_r"/>
  </contact>
  <equality>
    <weld name="hand_weld" body1="target_mocap" body2="hand" relpose="0 0 0 1 0 0 0" solref="0.01 1"/>
  </equality>
  <actuator>
    <position name="finger_l" joint="finger_l" kp="300" ctrlrange="0 {FINGER_RANGE}" forcerange="-15 15"/>
    <position name="finger_r" joint="finger_r" kp="300" ctrlrange="0 {FINGER_RANGE}" forcerange="-15 15"/>
  </actuator>
  {task_extra}
</mujoco>"""
