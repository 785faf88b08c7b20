"""action-images serve: metadata, a closed-loop chunk from a sim observation, /healthz, hostile requests answered with
an error while the server keeps serving, token and bind rules, and no pickle in the package.

    .venv/bin/pytest -q -p no:xdist tests/test_serve.py
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

import action_images
from action_images.baselines import load_model
from action_images.policy import PolicySettings
from action_images.serve import TOKEN_ENV
from action_images.serve.client import PolicyClient, ServerError
from action_images.serve.protocol import observation, pack, unpack
from action_images.serve.server import PolicyServer

torch.set_num_threads(1)
MAX_BYTES = 64 * 1024
TOKEN = "s3cret-token-0123456789"
SETTINGS = PolicySettings(sampler_steps=2, execute_k=3, max_resamples=0)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint)


@pytest.fixture(scope="module")
def server(model, checkpoint):
    srv = PolicyServer(model, SETTINGS, port=0, max_message_bytes=MAX_BYTES, checkpoint=str(checkpoint))
    srv.start_in_thread()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def url(server):
    return f"ws://127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def sim():
    from action_images.sim import make_env

    env = make_env("reach_target", cameras=("left", "right"), image_size=32)
    obs, _ = env.reset(seed=0)
    cameras = list(env.cameras)
    env.close()
    return obs, cameras


@pytest.fixture(scope="module")
def client(url):
    with PolicyClient(url) as c:
        yield c


def valid_request(sim):
    obs, cameras = sim
    return observation(obs, cameras)


def check_chunk(reply, k=3):
    a = reply["actions"]
    assert a.shape == (k, 8) and a.dtype == np.float64 and np.isfinite(a).all()
    np.testing.assert_allclose(np.linalg.norm(a[:, 3:7], axis=1), 1.0, atol=1e-6)
    assert ((a[:, 7] >= 0) & (a[:, 7] <= 1)).all()


# ---- the happy path --------------------------------------------------------------------------------------------------
def test_metadata_on_connect(client, checkpoint):
    m = client.metadata
    assert m["kind"] == "metadata" and m["model"] == "wam" and m["camera_names"] == ["left", "right"]
    assert m["action_format"] == ["x", "y", "z", "qx", "qy", "qz", "qw", "g"] and m["action_frame"] == "world"
    assert (m["image_size"], m["horizon"], m["stride"], m["execute_k"]) == (32, 2, 4, 3)
    assert m["max_message_bytes"] == MAX_BYTES and m["auth"] == "none" and m["checkpoint"] == str(checkpoint)
    assert json.dumps(m)


def test_sim_observation_returns_a_chunk_with_timing(client, sim):
    obs, cameras = sim
    client.reset(seed=0)
    reply = client.infer(obs, cameras)
    check_chunk(reply)
    H = client.metadata["horizon"]
    assert reply["keyframes"].shape == (H, 8) and reply["reproj_error"].shape == (H, 3)
    assert reply["valid"].dtype == bool and reply["valid"].shape == (H,) and reply["disagree"].shape == (H,)
    assert reply["decision"] in ("execute", "replan", "hold", "hold_invalid")
    assert reply["view_names"] == ["left", "right"] and reply["samples"] == 1
    np.testing.assert_allclose(reply["current"][:7], obs["ee_pose"][:7])
    t = reply["timing_ms"]
    assert {"observe", "generate", "decode", "chunk", "total", "queue", "server"} <= set(t)
    assert all(np.isfinite(v) and v >= 0 for v in t.values()) and t["server"] >= t["total"]
    # same seed, same observation -> the same chunk (reset reseeds this connection's sampler)
    again = client.infer(obs, cameras, reset=True, seed=0)
    np.testing.assert_array_equal(again["actions"], reply["actions"])


def test_a_moved_camera_is_a_new_calibration(client, sim):
    from action_images.geometry import Camera

    obs, cameras = sim
    moved = [cameras[0], Camera.look_at((0.5, 0.8, 0.6), (0.0, 0.0, 0.1), 50, 32, 32, name="right")]
    check_chunk(client.infer(obs, moved))


def test_healthz(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as r:
        assert r.status == 200 and r.read().strip() == b"ok"


# ---- hostile requests: an error, and the same connection serves the next valid request -------------------------------
def mutate(fn):
    def build(sim):
        msg = valid_request(sim)
        fn(msg)
        return pack(msg)
    return build


def set_cam(name, key, value):
    return mutate(lambda m: m["cameras"][name].__setitem__(key, value))


def nan_K(m):
    K = m["cameras"]["left"]["K"].copy()
    K[0, 2] = np.nan
    m["cameras"]["left"]["K"] = K


def scaled_T(m):
    T = m["cameras"]["left"]["T_cam_world"].copy()
    T[:3, :3] *= 2.0
    m["cameras"]["left"]["T_cam_world"] = T


def mirrored_T(m):
    T = m["cameras"]["right"]["T_cam_world"].copy()
    T[0, :3] *= -1.0
    m["cameras"]["right"]["T_cam_world"] = T


def drop_camera(m):
    del m["images"]["right"]
    del m["cameras"]["right"]


def rename_camera(m):
    m["images"] = {("wrist" if k == "right" else k): v for k, v in m["images"].items()}
    m["cameras"] = {("wrist" if k == "right" else k): v for k, v in m["cameras"].items()}


def forged_array(m):
    m["ee_pose"] = {"__ndarray__": True, "dtype": "<f8", "shape": [8], "data": b"\0" * 63}


def object_dtype(m):
    m["ee_pose"] = {"__ndarray__": True, "dtype": "|O", "shape": [8], "data": b"\0" * 64}


BAD = {
    "float image": (mutate(lambda m: m["images"].__setitem__("left", m["images"]["left"].astype(np.float32))),
                    "dtype uint8"),
    "RGBA image": (mutate(lambda m: m["images"].__setitem__("left", np.zeros((32, 32, 4), np.uint8))), "[H, W, 3]"),
    "NaN in K": (mutate(nan_K), "NaN"),
    "negative focal": (set_cam("left", "K", [[-30.0, 0, 15.5], [0, 30.0, 15.5], [0, 0, 1]]), "focal"),
    "non-rigid T": (mutate(scaled_T), "rigid"),
    "mirror T (det -1)": (mutate(mirrored_T), "rigid"),
    "size mismatch": (set_cam("left", "width", 64), "calibration says"),
    "missing camera": (mutate(drop_camera), "2..16"),
    "unknown camera": (mutate(rename_camera), "unknown ['wrist']"),
    "NaN pose": (mutate(lambda m: m["ee_pose"].__setitem__(0, np.nan)), "ee_pose"),
    "non-unit quaternion": (mutate(lambda m: m["ee_pose"].__setitem__(6, 3.0)), "unit norm"),
    "long instruction": (mutate(lambda m: m.__setitem__("instruction", "x" * 5000)), "instruction"),
    "unknown key": (mutate(lambda m: m.__setitem__("prompt", "hi")), "unknown keys ['prompt']"),
    "forged array length": (mutate(forged_array), "needs 64 bytes"),
    "object dtype": (mutate(object_dtype), "not allowed"),
    "msgpack ext type": (lambda sim: msgpack.packb(msgpack.ExtType(5, b"x")), "extension"),
    "not a map": (lambda sim: pack([1, 2, 3]), "msgpack map"),
    "garbage bytes": (lambda sim: bytes(range(193, 256)) * 3, "not a msgpack message"),
    "JSON text frame": (lambda sim: '{"images": {}}', "text frame"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_gets_an_error_and_the_connection_keeps_serving(url, sim, case):
    build, expect = BAD[case]
    with connect(url, max_size=2**24, compression=None) as ws:
        assert unpack(ws.recv(timeout=30))["kind"] == "metadata"
        ws.send(build(sim))
        reply = unpack(ws.recv(timeout=60))
        assert set(reply) == {"error"} and expect in reply["error"], reply
        ws.send(pack(valid_request(sim)))
        check_chunk(unpack(ws.recv(timeout=60)))


def test_client_raises_the_server_error_and_goes_on(client, sim):
    obs, cameras = sim
    bad = dict(obs, ee_pose=np.r_[obs["ee_pose"][:7], 2.0])        # gripper outside [0, 1]
    with pytest.raises(ServerError, match="gripper"):
        client.infer(bad, cameras)
    check_chunk(client.infer(obs, cameras))


def test_oversize_message_closes_only_that_connection(url, sim):
    with connect(url, max_size=2**24, compression=None) as ws:
        ws.recv(timeout=30)
        ws.send(b"\0" * (MAX_BYTES + 1))
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=30)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    with PolicyClient(url) as c:                                      # the server goes on
        check_chunk(c.infer(*sim))
        big = dict(sim[0], images={n: np.zeros((256, 256, 3), np.uint8) for n in ("left", "right")})
        with pytest.raises(ServerError, match="at most"):            # the client refuses before sending
            c.infer(big, sim[1])


def test_two_clients_at_once_both_get_their_seeded_chunks(url, sim):
    replies, errors = [], []

    def robot():
        try:
            with PolicyClient(url) as c:
                replies.extend(c.infer(*sim, reset=True, seed=7) for _ in range(2))
        except Exception as e:           # noqa: BLE001 -- reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=robot) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(replies) == 4
    for r in replies:                   # same seed and observation on separate connections: the same chunk
        check_chunk(r)
        np.testing.assert_array_equal(r["actions"], replies[0]["actions"])


def test_the_command_listens_and_answers_health(checkpoint, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    cmd = [sys.executable, "-m", "action_images.cli", "serve", "--checkpoint", str(checkpoint), "--port", "0",
           "--threads", "1", "--sampler-steps", "2"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        port = re.search(r"listening on ws://127\.0\.0\.1:(\d+) \(model wam, cameras left,right", line)
        assert port, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port[1]}/healthz", timeout=10) as r:
            assert r.status == 200
        with PolicyClient(f"ws://127.0.0.1:{port[1]}") as c:
            assert c.metadata["settings"]["sampler_steps"] == 2
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stderr.close()


def test_a_baseline_checkpoint_is_served_the_same_way(tmp_path, sim):
    from action_images.baselines import BCConfig, BCModel

    torch.manual_seed(0)
    BCModel(BCConfig(image_size=16, horizon=2, stride=2, channels=[8, 16], keypoints=4, view_dim=16, text_dim=8,
                     text_vocab=64, hidden=32, depth=1, camera_names=["left", "right"])).save_pretrained(tmp_path)
    srv = PolicyServer(load_model(tmp_path), PolicySettings(execute_k=3), port=0)
    srv.start_in_thread()
    try:
        with PolicyClient(f"ws://127.0.0.1:{srv.port}") as c:
            assert c.metadata["model"] == "bc" and c.metadata["camera_names"] == ["left", "right"]
            reply = c.infer(*sim)
            check_chunk(reply)
            assert reply["decision"] in ("execute", "hold_invalid") and reply["keyframes"].shape == (2, 8)
    finally:
        srv.stop()


# ---- token and bind rules --------------------------------------------------------------------------------------------
def test_token_is_required_and_checked(model, sim):
    srv = PolicyServer(model, SETTINGS, port=0, token=TOKEN)
    srv.start_in_thread()
    try:
        url = f"ws://127.0.0.1:{srv.port}"
        for token in (None, "wrong-token-0123456789", TOKEN + "x"):
            with pytest.raises(ServerError, match="HTTP 401"):
                PolicyClient(url, token=token)
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=10) as r:
            assert r.status == 200                                     # health needs no token
        with PolicyClient(url, token=TOKEN) as c:
            assert c.metadata["auth"] == "bearer"
            check_chunk(c.infer(*sim))
    finally:
        srv.stop()


def test_too_many_clients_get_503(model):
    srv = PolicyServer(model, SETTINGS, port=0, max_clients=1)
    srv.start_in_thread()
    try:
        url = f"ws://127.0.0.1:{srv.port}"
        with PolicyClient(url):
            with pytest.raises(ServerError, match="HTTP 503"):
                PolicyClient(url)
        with PolicyClient(url) as c:                                  # the slot is free again
            assert c.reset()["reset"] is True
    finally:
        srv.stop()


def test_non_loopback_bind_needs_a_token(model, checkpoint, monkeypatch, capsys):
    from action_images.cli import main

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ValueError, match="without a token"):
        PolicyServer(model, SETTINGS, host="0.0.0.0", port=0)
    for argv in (["--host", "0.0.0.0"], ["--host", "192.168.1.20"], ["--host", "::"], ["--token", "short"]):
        assert main(["serve", "--checkpoint", str(checkpoint), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("action-images serve: ") and "token" in err[0], err
    assert main(["serve", "--checkpoint", str(checkpoint / "nope")]) == 2
    assert "config.json" in capsys.readouterr().err
    for argv, flag in ((["--seed", "-1"], "--seed"), (["--threads", "-2"], "--threads"),
                       (["--max-clients", "0"], "--max-clients")):
        assert main(["serve", "--checkpoint", str(checkpoint), "--port", "0", *argv]) == 2   # before any bind
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], err


# ---- no pickle -------------------------------------------------------------------------------------------------------
def test_no_pickle_import_in_the_package():
    root = Path(action_images.__file__).parent
    banned = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
    found = []
    for file in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{file.relative_to(root)}:{node.lineno} {n}" for n in names if n.split(".")[0] in banned]
    assert len(list(root.rglob("serve/*.py"))) >= 4 and not found, found


# ---- batching across clients: --max-batch, --batch-wait-ms -----------------------------------------------------------
def together(n, fn):
    """Run ``fn(i)`` for i < n in threads that send at the same moment; the results in order (errors raise)."""
    barrier, out, errors = threading.Barrier(n), [None] * n, []

    def run(i):
        try:
            out[i] = fn(i, barrier)
        except Exception as e:           # noqa: BLE001 -- reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return out


def batched_server(model, **kw):
    # a long wait: the requests sent together meet in one batch even on a loaded machine (a full batch goes at once)
    srv = PolicyServer(model, SETTINGS, port=0, **{"max_batch": 4, "batch_wait_ms": 1000.0, **kw})
    srv.start_in_thread()
    return srv


def test_batched_clients_each_get_the_chunk_of_their_own_seed(model, client, sim):
    obs, cameras = sim
    seeds = [3, 11, 12, 40]
    # the unbatched server, one request at a time: two chunks of each seed's episode
    alone = [[client.infer(obs, cameras, reset=True, seed=s), client.infer(obs, cameras)] for s in seeds]
    srv = batched_server(model)
    try:
        def robot(i, barrier):
            with PolicyClient(f"ws://127.0.0.1:{srv.port}") as c:
                c.reset(seed=seeds[i])
                barrier.wait(60)
                return [c.infer(obs, cameras) for _ in range(2)]           # the second chunk continues the noise

        replies = together(len(seeds), robot)
    finally:
        srv.stop()
    assert max(r["batch"] for rs in replies for r in rs) >= 2
    for rs, a in zip(replies, alone):
        for r, r_alone in zip(rs, a):
            check_chunk(r)
            # Each request's starting noise is drawn from its own generator exactly as a batch of 1 draws it, so only
            # the model's arithmetic differs with the batch size: matrix products over a larger batch may take other
            # kernels and summation orders, which moves the last bits (on this CPU they happen to agree exactly).
            np.testing.assert_allclose(r["actions"], r_alone["actions"], rtol=0, atol=1e-5)
            assert r["decision"] == r_alone["decision"]
    assert not np.array_equal(alone[0][0]["actions"], alone[1][0]["actions"])       # the seeds do differ


@pytest.fixture(scope="module")
def sim3():
    from action_images.sim import make_env

    env = make_env("reach_target", cameras=("left", "right", "front"), image_size=32)
    obs, _ = env.reset(seed=0)
    cameras = list(env.cameras)
    env.close()
    return obs, cameras


def recording(model, monkeypatch, calls, fail_on=None):
    """``model.sample`` that records the (batch size, views) of each call and raises when an instruction is
    ``fail_on`` (a model that fails on one accepted input)."""
    original = model.sample

    def sample(batch, **kw):
        calls.append(tuple(batch["rgb"].shape[:2]))
        if fail_on in batch["instruction"]:
            raise RuntimeError("the model failed on this input")
        return original(batch, **kw)

    monkeypatch.setattr(model, "sample", sample)


def test_policy_cameras_all_takes_every_view_a_request_sends(model, sim3):
    """``--policy-cameras all``: any >= 2 views per request, planned on all of them; fewer than 2 is an error."""
    obs, cameras = sim3
    srv = PolicyServer(model, PolicySettings(camera_names="all", execute_k=3, sampler_steps=1), port=0)
    srv.start_in_thread()
    try:
        with PolicyClient(f"ws://127.0.0.1:{srv.port}") as c:
            assert c.metadata["camera_names"] is None
            assert c.infer(obs, cameras)["view_names"] == [cam.name for cam in cameras]
            assert c.infer(obs, cameras[1:])["view_names"] == [cam.name for cam in cameras[1:]]
            with pytest.raises(ServerError, match=">= 2"):
                c.infer({**obs, "images": {cameras[0].name: obs["images"][cameras[0].name]}}, cameras[:1])
    finally:
        srv.stop()


def test_a_batch_never_mixes_view_counts(tmp_path, sim3, monkeypatch):
    from action_images.wam import WAMConfig, WorldActionModel

    torch.manual_seed(0)        # no camera_names and 3 views: a request with 2 cameras is planned on 2 views
    WorldActionModel(WAMConfig.from_preset("cpu-tiny", num_views=3)).save_pretrained(tmp_path)
    model3, calls = load_model(tmp_path), []
    recording(model3, monkeypatch, calls)
    obs, cameras = sim3
    views = [cameras, cameras[:2], cameras, cameras[:2]]
    srv = batched_server(model3)
    try:
        def robot(i, barrier):
            with PolicyClient(f"ws://127.0.0.1:{srv.port}") as c:
                barrier.wait(60)
                return c.infer(obs, views[i])

        replies = together(4, robot)
    finally:
        srv.stop()
    assert [len(r["view_names"]) for r in replies] == [3, 2, 3, 2]
    assert sorted(calls) == [(2, 2), (2, 3)], calls       # one call per view count, both requests of each in it
    assert all(r["batch"] == 2 for r in replies)


def test_plan_batch_keeps_models_and_image_sizes_apart(model, sim):
    from action_images.policy import ActionImagesPolicy
    from action_images.serve.batching import plan_batch
    from action_images.wam import WAMConfig, WorldActionModel

    torch.manual_seed(0)
    small = WorldActionModel(WAMConfig.from_preset("cpu-tiny", image_size=16, camera_names=["left", "right"]))
    policies = [ActionImagesPolicy(m, SETTINGS, seed=s) for s, m in enumerate([model, small, model, small])]
    chunks = plan_batch([(p, *sim) for p in policies])
    assert [c.batch for c in chunks] == [2, 2, 2, 2]
    assert [c.future_act.shape[2] for c in chunks] == [32, 16, 32, 16]
    for s, m, c in zip(range(4), [model, small, model, small], chunks):       # each as it plans alone
        alone = ActionImagesPolicy(m, SETTINGS, seed=s).plan(*sim)
        np.testing.assert_allclose(c.actions, alone.actions, rtol=0, atol=1e-5)


def test_a_bad_request_in_a_batch_gets_its_own_error(checkpoint, client, sim, monkeypatch):
    obs, cameras = sim
    alone = [client.infer(obs, cameras, reset=True, seed=s) for s in (5, 6)]
    failing, calls = load_model(checkpoint), []
    recording(failing, monkeypatch, calls, fail_on="boom")
    srv = batched_server(failing)
    messages = [observation(obs, cameras, reset=True, seed=5), observation(dict(obs, instruction="boom"), cameras),
                observation(obs, cameras, reset=True, seed=6), observation(dict(obs, ee_pose=obs["ee_pose"] * np.nan),
                                                                           cameras)]
    try:
        def robot(i, barrier):
            with connect(f"ws://127.0.0.1:{srv.port}", max_size=2**24, compression=None) as ws:
                ws.recv(timeout=30)
                barrier.wait(60)
                ws.send(pack(messages[i]))
                return unpack(ws.recv(timeout=60))

        replies = together(4, robot)
    finally:
        srv.stop()
    assert set(replies[1]) == {"error"} and "the model failed" in replies[1]["error"], replies[1]
    assert set(replies[3]) == {"error"} and "ee_pose" in replies[3]["error"], replies[3]    # refused before the queue
    assert calls[0] == (3, 2), calls               # the shared call failed; each request was then planned alone
    for r, a in zip((replies[0], replies[2]), alone):
        check_chunk(r)
        np.testing.assert_allclose(r["actions"], a["actions"], rtol=0, atol=1e-5)   # the noise was drawn again


def test_batching_flags_are_range_checked(model, checkpoint, capsys):
    from action_images.cli import main

    for kw, flag in (({"max_batch": 0}, "--max-batch"), ({"max_batch": 1.5}, "--max-batch"),
                     ({"batch_wait_ms": -1}, "--batch-wait-ms"), ({"batch_wait_ms": float("nan")}, "--batch-wait-ms")):
        with pytest.raises(ValueError, match=flag):
            PolicyServer(model, SETTINGS, port=0, **kw)
    for argv in (["--max-batch", "0"], ["--max-batch", "257"], ["--batch-wait-ms", "-1"],
                 ["--batch-wait-ms", "nan"], ["--batch-wait-ms", "1001"]):
        assert main(["serve", "--checkpoint", str(checkpoint), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("action-images serve: ") and argv[0] in err[0], err
    assert main(["bench", "serve", "--max-batch", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-batch" in err[0], err


def test_serve_takes_the_zoom_policy_flag(checkpoint, capsys):
    """--zoom is a policy flag of serve as of eval: below 1 is one line naming it, exit 2."""
    from action_images.cli import main

    assert main(["serve", "--checkpoint", str(checkpoint), "--zoom", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--zoom" in err[0], err


def test_a_model_that_reads_past_frames_is_refused_by_the_server(tmp_path, capsys):
    """The protocol carries the observations of replanning steps only, not the steps between them that a model with
    past frames reads: such a checkpoint is refused with a one-line error, before any bind."""
    from action_images.cli import main
    from action_images.wam import WAMConfig, WorldActionModel

    cfg = WAMConfig.from_preset("cpu-tiny", history=1)
    cfg.backbone = {**cfg.backbone, "context_channels": 4}
    WorldActionModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="past frames"):
        PolicyServer(load_model(tmp_path), SETTINGS, port=0)
    assert main(["serve", "--checkpoint", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "past frames" in err[0], err
