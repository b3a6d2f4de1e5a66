"""STAND-IN for the legacy ``from cuda import cudart`` module (cuda-python < 12.6.1): same as runtime.py."""

from cuda.bindings.runtime import *  # noqa: F401,F403
from cuda.bindings.runtime import cudaError_t, cudaMemcpyKind  # noqa: F401
