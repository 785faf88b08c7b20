"""The wire format of ``action-images serve``: msgpack messages with numpy arrays, and the checks on every request.

A numpy array travels as the map ``{"__ndarray__": true, "dtype": "<f8", "shape": [k, 8], "data": <bytes>}``
(little-endian, C order). Only the dtypes in :data:`DTYPES` are read or written; anything else -- an object array,
a msgpack extension type, a malformed array header -- is refused. Nothing here (or anywhere in this package) uses
pickle, so a message can carry data but never code.

    payload = pack({"ee_pose": np.zeros(8)})      # bytes
    message = unpack(payload)                     # {"ee_pose": array([...])}

:func:`parse_request` turns one decoded message into the policy's inputs (the observation dict the simulator would
hand the policy, and :class:`~action_images.geometry.Camera` objects) or raises :class:`RequestError` with a message
that names the field and the problem; docs/serve.md lists every field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import msgpack
import numpy as np

from action_images.geometry import POSE_NAMES, Camera, validate_poses

PROTOCOL_VERSION = 1
# dtype strings (numpy ``dtype.str``) that may cross the wire
DTYPES = ("|u1", "|b1", "<i4", "<i8", "<f4", "<f8")
MAX_NDIM = 4
MAX_CAMERAS = 16
MAX_NAME_LEN = 64
MAX_INSTRUCTION_LEN = 1000
MAX_IMAGE_SIDE = 4096
MAX_SEED = 2**63 - 1
ROTATION_TOL = 1e-5            # |R Rᵀ - I| and |det R - 1| above this: not a rotation (geometry.Camera's tolerance)
REQUEST_KEYS = ("images", "cameras", "ee_pose", "instruction", "reset", "seed")
CAMERA_KEYS = ("K", "T_cam_world", "width", "height")


class RequestError(ValueError):
    """A request the server refuses; the message goes back to the client as ``{"error": message}``."""


# ---- msgpack with numpy arrays ---------------------------------------------------------------------------------------
def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f" and obj.dtype.itemsize < 4:
            obj = obj.astype(np.float32)
        arr = np.ascontiguousarray(obj, dtype=obj.dtype.newbyteorder("<"))
        if arr.dtype.str not in DTYPES:
            raise TypeError(f"arrays of dtype {obj.dtype} cannot be sent; allowed {', '.join(DTYPES)}")
        return {"__ndarray__": True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot send an object of type {type(obj).__name__}")


def _decode_array(d: dict) -> Any:
    if "__ndarray__" not in d:
        return d
    if set(d) != {"__ndarray__", "dtype", "shape", "data"} or d["__ndarray__"] is not True:
        raise RequestError("an array must be {'__ndarray__': true, 'dtype', 'shape', 'data'} and nothing else")
    dtype, shape, data = d["dtype"], d["shape"], d["data"]
    if dtype not in DTYPES:
        raise RequestError(f"array dtype {dtype!r} is not allowed; allowed {', '.join(DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise RequestError(f"array shape must be a list of at most {MAX_NDIM} non-negative integers; got {shape!r}")
    if not isinstance(data, bytes):
        raise RequestError("array data must be msgpack bin (bytes)")
    dt = np.dtype(dtype)
    if math.prod(shape) * dt.itemsize != len(data):
        raise RequestError(f"array of shape {shape} and dtype {dtype} needs {math.prod(shape) * dt.itemsize} bytes; "
                           f"got {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(shape).copy()    # writable, independent of the message buffer


def _refuse_ext(code: int, data: bytes) -> Any:
    raise RequestError(f"msgpack extension types are not accepted (got type {code})")


def pack(obj: Any) -> bytes:
    """msgpack bytes of ``obj`` (dicts, lists, str, numbers, bool, None, bytes and numpy arrays of :data:`DTYPES`)."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpack(payload: Any) -> Any:
    """The object in one msgpack message, arrays decoded (writable copies); RequestError for
    anything that is not one well-formed msgpack object."""
    if isinstance(payload, str):
        raise RequestError("expected a binary msgpack message; got a text frame")
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True, object_hook=_decode_array,
                               ext_hook=_refuse_ext, timestamp=0)
    except RequestError:
        raise
    except Exception as e:   # msgpack's ExtraData / FormatError / StackError / UnicodeDecodeError / ValueError
        raise RequestError(f"not a msgpack message: {type(e).__name__}: {e}"[:300]) from None


# ---- request checks --------------------------------------------------------------------------------------------------
@dataclass
class Request:
    """One parsed request: ``obs`` (``images``, ``ee_pose``, ``instruction``, as the simulator's observation) with
    its ``cameras``, or ``obs is None`` for a reset-only message."""

    obs: dict[str, Any] | None
    cameras: list[Camera]
    reset: bool = False
    seed: int | None = None


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_LEN or not value.isprintable():
        raise RequestError(f"{what} must be a printable string of 1..{MAX_NAME_LEN} characters; got {value!r:.80}")
    return value


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(f"{what} must be an integer in [{lo}, {hi}]; got {value!r:.80}")
    return value


def _matrix(value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A finite float64 array of ``shape`` from an array message or nested lists of numbers."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu":
            raise RequestError(f"{what} must be a float array; got dtype {value.dtype}")
        arr = value.astype(np.float64)
    elif isinstance(value, list):
        flat = value
        for _ in shape[1:]:
            if not all(isinstance(x, list) for x in flat):
                raise RequestError(f"{what} must have shape {list(shape)}")
            flat = [y for x in flat for y in x]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in flat):
            raise RequestError(f"{what} must hold numbers only")
        try:
            arr = np.array(value, dtype=np.float64)
        except ValueError:
            raise RequestError(f"{what} must have shape {list(shape)}") from None
    else:
        raise RequestError(f"{what} must be an array of shape {list(shape)}; got {type(value).__name__}")
    if arr.shape != shape:
        raise RequestError(f"{what} must have shape {list(shape)}; got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise RequestError(f"{what} contains NaN or inf")
    return arr


def _camera(name: str, calib: Any, image: np.ndarray) -> Camera:
    what = f"cameras[{name!r}]"
    if not isinstance(calib, dict):
        raise RequestError(f"{what} must be a map with {', '.join(CAMERA_KEYS)}")
    keys = set(calib)
    if keys != set(CAMERA_KEYS):
        raise RequestError(f"{what} must have exactly the keys {', '.join(CAMERA_KEYS)}; missing "
                           f"{sorted(set(CAMERA_KEYS) - keys)}, unknown {sorted(map(str, keys - set(CAMERA_KEYS)))}")
    K = _matrix(calib["K"], (3, 3), f"{what}.K")
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise RequestError(f"{what}.K: focal lengths K[0,0] and K[1,1] must be > 0; got {K[0, 0]:g}, {K[1, 1]:g}")
    if not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise RequestError(f"{what}.K: last row must be [0, 0, 1]; got {K[2].tolist()}")
    T = _matrix(calib["T_cam_world"], (4, 4), f"{what}.T_cam_world")
    R = T[:3, :3]
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0]):
        raise RequestError(f"{what}.T_cam_world: last row must be [0, 0, 0, 1]; got {T[3].tolist()}")
    if not np.allclose(R @ R.T, np.eye(3), atol=ROTATION_TOL) or abs(np.linalg.det(R) - 1.0) > ROTATION_TOL:
        raise RequestError(f"{what}.T_cam_world is not a rigid transform (rotation block needs R Rᵀ = I and det "
                           f"+1; det {np.linalg.det(R):.4g})")
    width = _int(calib["width"], f"{what}.width", 1, MAX_IMAGE_SIDE)
    height = _int(calib["height"], f"{what}.height", 1, MAX_IMAGE_SIDE)
    if image.shape[:2] != (height, width):
        raise RequestError(f"images[{name!r}] is {image.shape[1]}x{image.shape[0]} (WxH) but its calibration says "
                           f"{width}x{height}")
    try:
        return Camera(K=K, T_cam_world=T, width=width, height=height, name=name)
    except ValueError as e:
        raise RequestError(str(e)) from None


def _image(name: str, value: Any) -> np.ndarray:
    what = f"images[{name!r}]"
    if not isinstance(value, np.ndarray):
        raise RequestError(f"{what} must be an array (uint8 [H, W, 3]); got {type(value).__name__}")
    if value.dtype != np.uint8:
        raise RequestError(f"{what} must have dtype uint8; got {value.dtype}")
    if value.ndim != 3 or value.shape[2] != 3 or not (1 <= value.shape[0] <= MAX_IMAGE_SIDE
                                                      and 1 <= value.shape[1] <= MAX_IMAGE_SIDE):
        raise RequestError(f"{what} must have shape [H, W, 3] with H, W in 1..{MAX_IMAGE_SIDE}; got "
                           f"{list(value.shape)}")
    return value


def parse_request(msg: Any, camera_names: Sequence[str] | None) -> Request:
    """Check every field of one decoded request; ``camera_names``: the views the model sees (None: any >= 2).

    Raises :class:`RequestError` naming the first problem found."""
    if not isinstance(msg, dict):
        raise RequestError(f"a request must be a msgpack map; got {type(msg).__name__}")
    unknown = sorted(str(k)[:MAX_NAME_LEN] for k in set(msg) - set(REQUEST_KEYS))
    if unknown:
        raise RequestError(f"unknown keys {unknown}; a request has {', '.join(REQUEST_KEYS)}")
    reset = msg.get("reset", False)
    if not isinstance(reset, bool):
        raise RequestError(f"reset must be true or false; got {reset!r:.80}")
    seed = msg.get("seed")
    if seed is not None:
        seed = _int(seed, "seed", 0, MAX_SEED)
        if not reset:
            raise RequestError("seed is only read together with reset: true")
    if set(msg) <= {"reset", "seed"}:
        if not reset:
            raise RequestError("an empty request; send an observation, or reset: true")
        return Request(obs=None, cameras=[], reset=True, seed=seed)
    missing = [k for k in ("images", "cameras", "ee_pose", "instruction") if k not in msg]
    if missing:
        raise RequestError(f"missing keys {missing}")
    images, calibs = msg["images"], msg["cameras"]
    for what, d in (("images", images), ("cameras", calibs)):
        if not isinstance(d, dict) or not 2 <= len(d) <= MAX_CAMERAS:
            raise RequestError(f"{what} must be a map of 2..{MAX_CAMERAS} camera names (decoding triangulates "
                               f"from >= 2 views)")
        for name in d:
            _name(name, f"a camera name in {what}")
    if list(images) != list(calibs):
        raise RequestError(f"images and cameras must name the same cameras in the same order; got "
                           f"{list(images)} and {list(calibs)}")
    if camera_names:
        absent = [n for n in camera_names if n not in images]
        extra = [n for n in images if n not in camera_names]
        if absent or extra:
            raise RequestError(f"the model sees cameras {list(camera_names)}; missing {absent}, unknown {extra}")
    cameras = [_camera(name, calibs[name], _image(name, images[name])) for name in images]
    pose = _matrix(msg["ee_pose"], (8,), "ee_pose")
    try:
        pose = validate_poses(pose, f"ee_pose [{','.join(POSE_NAMES)}]")
    except ValueError as e:
        raise RequestError(str(e)) from None
    instruction = msg["instruction"]
    if not isinstance(instruction, str) or len(instruction) > MAX_INSTRUCTION_LEN:
        raise RequestError(f"instruction must be a string of at most {MAX_INSTRUCTION_LEN} characters")
    obs = {"images": dict(images), "ee_pose": pose, "instruction": instruction}
    return Request(obs=obs, cameras=cameras, reset=reset, seed=seed)


def chunk_reply(chunk: Any) -> dict[str, Any]:
    """The answer to one observation, from a :class:`~action_images.policy.Chunk` (timings in ms are added by the
    server)."""
    return {"actions": np.asarray(chunk.actions, dtype=np.float64),
            "keyframes": np.asarray(chunk.keyframes, dtype=np.float64),
            "valid": np.asarray(chunk.valid, dtype=bool),
            "disagree": np.asarray(chunk.disagree, dtype=bool),
            "reproj_error": np.asarray(chunk.reproj_error, dtype=np.float64),
            "decision": str(chunk.decision),
            "current": np.asarray(chunk.current, dtype=np.float64),
            "view_names": list(chunk.view_names),
            "samples": int(chunk.samples)}


def observation(obs: dict[str, Any], cameras: Sequence[Any], reset: bool = False,
                seed: int | None = None) -> dict[str, Any]:
    """A request from a simulator-style observation (``obs["images"][name]``, ``obs["ee_pose"]``,
    ``obs["instruction"]``) and calibrated cameras (anything with ``name``, ``K``, ``T_cam_world``, ``width``,
    ``height``, e.g. :class:`~action_images.geometry.Camera`); only the given cameras' images are sent."""
    msg: dict[str, Any] = {
        "images": {c.name: np.array(obs["images"][c.name], order="C") for c in cameras},      # copies
        "cameras": {c.name: {"K": np.array(c.K, dtype=np.float64), "T_cam_world": np.array(c.T_cam_world,
                                                                                         dtype=np.float64),
                             "width": int(c.width), "height": int(c.height)} for c in cameras},
        "ee_pose": np.array(obs["ee_pose"], dtype=np.float64),
        "instruction": str(obs.get("instruction", ""))}
    if reset:
        msg["reset"] = True
        if seed is not None:
            msg["seed"] = int(seed)
    return msg
