"""Put the stand-in ``tensorrt`` and ``cuda`` (cuda-python) modules in place for one test.

    from stubs.fake_env import stand_ins  # a pytest fixture
    def test_x(stand_ins):
        trt = stand_ins(trt_version="8.6.1")

The stand-ins shadow any real installation for the duration of the test (sys.path first, and
previously imported ``tensorrt*`` / ``cuda*`` modules dropped), and are dropped again afterwards.
For subprocesses, put ``stand_in_env(...)`` into the child's environment.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

STUBS = Path(__file__).resolve().parent
_PREFIXES = ("tensorrt", "cuda")


def _purge() -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in _PREFIXES]:
        del sys.modules[name]


def stand_in_env(trt_version: str = "10.3.0", devices: int = 1, dla_cores: int = 0,
                 gpu_name: str = "Stand-in Orin (fake)", cc: str = "8.7") -> dict[str, str]:
    """Environment variables that configure the stand-ins (PYTHONPATH included, for child processes)."""
    path = os.pathsep.join([str(STUBS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"FAKE_TRT_VERSION": trt_version, "FAKE_CUDA_DEVICES": str(devices), "FAKE_TRT_DLA_CORES": str(dla_cores),
            "FAKE_CUDA_GPU_NAME": gpu_name, "FAKE_CUDA_CC": cc, "PYTHONPATH": path}


def use_stand_ins(monkeypatch, **kwargs):
    """Configure and import the stand-in tensorrt (returned). Pair with ``purge()`` after the test
    (the ``stand_ins`` fixture does both)."""
    # PYTHONPATH too: export builds engines in a child process (deploy/trt/child.py).
    for key, value in stand_in_env(**kwargs).items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(STUBS))
    _purge()
    trt = importlib.import_module("tensorrt")
    if not getattr(trt, "STAND_IN", False):
        raise RuntimeError(f"expected the stand-in tensorrt, imported {trt.__file__}")
    return trt


purge = _purge


@pytest.fixture
def stand_ins(monkeypatch):
    """``stand_ins(trt_version="11.1.0", devices=1, dla_cores=0)`` -> the stand-in tensorrt module."""
    yield lambda **kwargs: use_stand_ins(monkeypatch, **kwargs)
    _purge()
