import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def lerobot_root(tmp_path_factory):
    """A 4-episode LeRobot v3 dataset written from synthetic scenes (3 cameras, 40 px)."""
    from action_images.data import DatasetWriter
    from action_images.data.windows import SyntheticWindows, WindowConfig

    root = tmp_path_factory.mktemp("ds") / "pick"
    syn = SyntheticWindows(WindowConfig(), seed=1, num_cameras=3, episode_len=12, native_size=40)
    with DatasetWriter(root, fps=10, cameras=syn.cameras, image_size=(40, 40)) as w:
        for scene in range(4):
            ep = syn.episode(scene)
            images = {c.name: np.stack([syn.render(c, s, ep["cube"], ep["color"], 0.0) for s in ep["states"]])
                      for c in syn.cameras}
            w.add_episode(instruction=ep["instruction"], actions=ep["actions"], states=ep["states"], images=images)
    return root


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A tiny random world action model that, like the shipped checkpoint, was trained on left + right (test files
    that need another kind define their own ``checkpoint``)."""
    from action_images.wam import WAMConfig, WorldActionModel

    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    torch.manual_seed(0)
    WorldActionModel(WAMConfig.from_preset("cpu-tiny", camera_names=["left", "right"])).save_pretrained(path)
    return path
