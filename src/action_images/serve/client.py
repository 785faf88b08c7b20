"""The robot side of ``action-images serve``: send an observation, get the next action chunk.

    from action_images.serve.client import PolicyClient

    client = PolicyClient("ws://127.0.0.1:8000", token=None)       # token: the server's, if it has one
    print(client.metadata["camera_names"], client.metadata["action_format"])
    client.reset(seed=0)                                          # a new episode
    while not done:
        reply = client.infer(obs, cameras)        # obs["images"][name], obs["ee_pose"], obs["instruction"]
        for action in reply["actions"]:           # [k, 8] absolute [x,y,z,qx,qy,qz,qw,g], world frame, g=1 open
            robot.move_to(action)
        obs = robot.observe()

``cameras`` are the calibrated views (anything with ``name``, ``K``, ``T_cam_world``, ``width``, ``height``, e.g.
:class:`~action_images.geometry.Camera`): a camera that moved is simply sent with its new calibration. A request
the server refuses raises :class:`ServerError` with the server's message; the connection stays usable. A closed
connection (the server restarted, or closed it for an oversize message) raises :class:`ServerError` too and the
next call reconnects, which starts a new episode on the server.
"""

from __future__ import annotations

from typing import Any, Sequence

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from action_images.serve.protocol import RequestError, observation, pack, unpack

DEFAULT_MAX_REPLY_BYTES = 64 * 2**20


class ServerError(RuntimeError):
    """The server refused a request (``reply`` holds its ``{"error": ...}``) or the connection failed."""

    def __init__(self, message: str, reply: dict[str, Any] | None = None):
        super().__init__(message)
        self.reply = reply


class PolicyClient:
    """A blocking client for one policy server; ``url`` ws:// or wss://, ``token`` sent as
    ``Authorization: Bearer TOKEN``. Connects at once and reads the server's :attr:`metadata`."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 120.0,
                 max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES):
        self.url, self.timeout, self.max_reply_bytes = url, float(timeout), int(max_reply_bytes)
        self._headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        self._ws: ClientConnection | None = None
        self.metadata: dict[str, Any] = {}
        self.connect()

    def connect(self) -> None:
        """(Re)open the connection and read the metadata message; ServerError if the server refuses."""
        self.close()
        try:             # legacy=True: the connection object itself, held until close() (not a with-block)
            ws = connect(self.url, additional_headers=self._headers, max_size=self.max_reply_bytes,
                         compression=None, open_timeout=self.timeout, close_timeout=5.0, legacy=True)
        except InvalidStatus as e:
            body = (e.response.body or b"").decode("utf-8", "replace").strip()
            raise ServerError(f"{self.url}: HTTP {e.response.status_code}: {body}") from None
        except (OSError, WebSocketException, TimeoutError) as e:
            raise ServerError(f"{self.url}: cannot connect: {e}") from None
        try:
            meta = unpack(ws.recv(timeout=self.timeout))
        except Exception as e:
            ws.close()
            raise ServerError(f"{self.url}: no metadata message: {e}") from None
        if not isinstance(meta, dict) or meta.get("kind") != "metadata":
            ws.close()
            raise ServerError(f"{self.url}: the first message is not the server metadata")
        self._ws, self.metadata = ws, meta

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one request map, return the reply map; ServerError for ``{"error": ...}`` or a lost connection."""
        if self._ws is None:
            self.connect()
        payload = pack(msg)
        limit = self.metadata.get("max_message_bytes")
        if isinstance(limit, int) and len(payload) > limit:
            raise ServerError(f"the request is {len(payload)} bytes; the server takes at most {limit} (send smaller "
                              "images or raise the server's --max-message-mb)")
        try:
            self._ws.send(payload)
            reply = unpack(self._ws.recv(timeout=self.timeout))
        except ConnectionClosed as e:
            self._ws = None
            raise ServerError(f"{self.url}: connection closed ({e}); the next call reconnects") from None
        except RequestError as e:
            self.close()
            raise ServerError(f"{self.url}: the reply is not a msgpack message ({e})") from None
        except TimeoutError:
            self.close()
            raise ServerError(f"{self.url}: no reply within {self.timeout:g} s; the next call reconnects") from None
        if not isinstance(reply, dict):
            raise ServerError(f"{self.url}: the reply is not a map")
        if "error" in reply:
            raise ServerError(str(reply["error"]), reply)
        return reply

    def infer(self, obs: dict[str, Any], cameras: Sequence[Any] | None = None, *, reset: bool = False,
              seed: int | None = None) -> dict[str, Any]:
        """The action chunk for one observation. With ``cameras``, ``obs`` is simulator-style (``obs["images"]``,
        ``obs["ee_pose"]``, ``obs["instruction"]``) and the request is built from both; without, ``obs`` is already
        a request map (docs/serve.md). Reply keys: ``actions`` [k, 8], ``keyframes`` [H, 8] (NaN rows where
        invalid), ``valid`` / ``disagree`` [H] bool, ``reproj_error`` [H, 3], ``decision``, ``current`` [8],
        ``view_names``, ``samples``, ``timing_ms``."""
        msg = observation(obs, cameras, reset=reset, seed=seed) if cameras is not None else dict(obs)
        if cameras is None and reset:
            msg["reset"] = True
            if seed is not None:
                msg["seed"] = int(seed)
        return self.request(msg)

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        """Start a new episode on the server (fresh sampler noise from ``seed``, no remembered gripper command)."""
        msg: dict[str, Any] = {"reset": True}
        if seed is not None:
            msg["seed"] = int(seed)
        return self.request(msg)

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            finally:
                self._ws = None

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
