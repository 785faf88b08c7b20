"""Datasets: LeRobot v3.0 reader/writer with camera calibration, and the ``collect`` command (``data/collect.py``)."""

from .lerobot import Episode, LeRobotDataset
from .lerobot_writer import DatasetWriter

__all__ = ["DatasetWriter", "Episode", "LeRobotDataset"]
