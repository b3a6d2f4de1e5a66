"""STAND-IN for cuda-python's runtime API (``cuda.bindings.runtime``) — NOT the real package.

Written for tests on machines without an NVIDIA GPU, from cuda-python's documented API and NVIDIA's
samples (docs/tensorrt.md, "Runtime" and "Without a GPU"). It
follows cuda-python's calling convention (every call returns a tuple whose first item is a
``cudaError_t``), but "device" memory is ordinary host memory: ``cudaMalloc`` returns the address
of a numpy buffer and copies are ``ctypes.memmove``. It proves that callers check errors, pass
sizes and pointers consistently and release what they allocate; it cannot prove anything about a
real GPU (transfers, asynchrony, streams, timings, memory limits).

Configured by environment variables read at call time:
``FAKE_CUDA_DEVICES`` (default 1; 0 = no device -> cudaErrorNoDevice / InsufficientDriver),
``FAKE_CUDA_GPU_NAME`` (default "Stand-in GPU (fake)"), ``FAKE_CUDA_CC`` (default "8.7"),
``FAKE_CUDA_INTEGRATED`` (default 0), ``FAKE_CUDA_TOTAL_MB`` / ``FAKE_CUDA_FREE_MB``.
"""

from __future__ import annotations

import ctypes
import enum
import os
import time
from dataclasses import dataclass

import numpy as np

STAND_IN = True


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


_OK = cudaError_t.cudaSuccess
_BUFFERS: dict[int, np.ndarray] = {}   # address -> owning buffer ("device" and pinned host memory)
_STREAMS: set[int] = set()
_EVENTS: dict[int, float] = {}
_next_handle = [1000]


def _devices() -> int:
    return int(os.environ.get("FAKE_CUDA_DEVICES", "1"))


def _no_device():
    # cuda-bindings without a driver reports InsufficientDriver (35) (docs/tensorrt.md, "Without a GPU").
    return cudaError_t.cudaErrorInsufficientDriver


@dataclass
class cudaDeviceProp:
    name: bytes
    major: int
    minor: int
    totalGlobalMem: int
    integrated: int
    multiProcessorCount: int = 8


def cudaGetDeviceCount():
    count = _devices()
    return (_OK, count) if count > 0 else (_no_device(), 0)


def cudaSetDevice(device: int):
    return (_OK,) if 0 <= device < _devices() else (cudaError_t.cudaErrorInvalidDevice,)


def cudaGetDeviceProperties(device: int):
    if not 0 <= device < _devices():
        return (_no_device() if _devices() == 0 else cudaError_t.cudaErrorInvalidDevice, None)
    major, minor = os.environ.get("FAKE_CUDA_CC", "8.7").split(".")
    name = os.environ.get("FAKE_CUDA_GPU_NAME", "Stand-in GPU (fake)").encode()
    return _OK, cudaDeviceProp(name=name, major=int(major), minor=int(minor),
                               totalGlobalMem=int(os.environ.get("FAKE_CUDA_TOTAL_MB", "8192")) << 20,
                               integrated=int(os.environ.get("FAKE_CUDA_INTEGRATED", "0")))


def cudaRuntimeGetVersion():
    return (_OK, 12060) if _devices() else (_no_device(), 0)


def cudaDriverGetVersion():
    return (_OK, 12060) if _devices() else (_OK, 0)


def cudaMemGetInfo():
    if not _devices():
        return _no_device(), 0, 0
    total = int(os.environ.get("FAKE_CUDA_TOTAL_MB", "8192")) << 20
    free = int(os.environ.get("FAKE_CUDA_FREE_MB", str(total >> 21))) << 20
    return _OK, free, total


def _alloc(nbytes: int):
    if not _devices():
        return _no_device(), 0
    buffer = np.zeros(max(int(nbytes), 1), dtype=np.uint8)
    address = buffer.ctypes.data
    _BUFFERS[address] = buffer
    return _OK, address


def cudaMalloc(nbytes: int):
    return _alloc(nbytes)


def cudaMallocHost(nbytes: int):
    return _alloc(nbytes)


def _free(address) -> tuple:
    return (_OK,) if _BUFFERS.pop(int(address), None) is not None else (cudaError_t.cudaErrorInvalidValue,)


def cudaFree(address):
    return _free(address)


def cudaFreeHost(address):
    return _free(address)


def cudaMemcpy(dst, src, nbytes: int, kind):
    ctypes.memmove(int(dst), int(src), int(nbytes))
    return (_OK,)


def cudaMemcpyAsync(dst, src, nbytes: int, kind, stream):
    if int(stream) not in _STREAMS and int(stream) != 0:
        return (cudaError_t.cudaErrorInvalidValue,)
    return cudaMemcpy(dst, src, nbytes, kind)


def _handle() -> int:
    _next_handle[0] += 1
    return _next_handle[0]


def cudaStreamCreate():
    if not _devices():
        return _no_device(), 0
    stream = _handle()
    _STREAMS.add(stream)
    return _OK, stream


def cudaStreamSynchronize(stream):
    return (_OK,) if int(stream) in _STREAMS or int(stream) == 0 else (cudaError_t.cudaErrorInvalidValue,)


def cudaStreamDestroy(stream):
    if int(stream) not in _STREAMS:
        return (cudaError_t.cudaErrorInvalidValue,)
    _STREAMS.discard(int(stream))
    return (_OK,)


def cudaEventCreate():
    event = _handle()
    _EVENTS[event] = 0.0
    return _OK, event


def cudaEventRecord(event, stream=0):
    _EVENTS[int(event)] = time.perf_counter()
    return (_OK,)


def cudaEventSynchronize(event):
    return (_OK,)


def cudaEventElapsedTime(start, end):
    return _OK, (_EVENTS[int(end)] - _EVENTS[int(start)]) * 1000.0


def cudaEventDestroy(event):
    _EVENTS.pop(int(event), None)
    return (_OK,)


def cudaGetErrorString(error):
    return _OK, cudaError_t(error).name.encode()


def cudaGetErrorName(error):
    return _OK, cudaError_t(error).name.encode()


def cudaDeviceSynchronize():
    return (_OK,)


def live_allocations() -> int:
    """Stand-in only: number of buffers not yet freed (tests check for leaks)."""
    return len(_BUFFERS)
