"""What this CPU can do for int8 inference, and whether an int8 artifact is safe on it.

Why it matters: ONNX Runtime's and oneDNN's (OpenVINO's) x86 int8 kernels multiply unsigned
8-bit activations by signed 8-bit weights. Without VNNI (AVX-512 VNNI, AVX-VNNI or AMX) they use
``VPMADDUBSW``, which adds two such products into a *16-bit* intermediate with saturation:
255 * 127 * 2 = 64770 does not fit in 32767, so full-range 8-bit weights give wrong logits on
AVX2-only CPUs (most rented servers and older desktops). Weights quantized to 7 bits
([-64, 64]) keep 255 * 64 * 2 = 32640 in range, so no kernel can saturate. VNNI, AMX and
ARM's kernels accumulate in 32 bits and are exact with either. See docs/int8.md.

The features come from numpy's CPUID-based detection (it asks the CPU itself, so it is right
under an emulator too); /proc/cpuinfo only adds the flags numpy does not know (AVX-VNNI, AMX)
when it agrees with numpy on the basics, i.e. when it describes the CPU this process runs on.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

# Flags worth recording for inference speed and correctness, by their /proc/cpuinfo names.
_X86_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
              "avx_vnni", "amx_int8", "amx_bf16")
_ARM_FLAGS = ("asimd", "asimddp", "i8mm", "sve", "fphp", "asimdhp", "bf16")
# numpy's feature names -> the /proc/cpuinfo names above.
_NUMPY_NAMES = {"AVX2": "avx2", "FMA3": "fma", "F16C": "f16c", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
                "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16", "AVX512FP16": "avx512_fp16",
                "ASIMD": "asimd", "ASIMDDP": "asimddp", "ASIMDHP": "asimdhp", "FPHP": "fphp", "SVE": "sve"}
# Any of these gives x86 int8 kernels a 32-bit accumulation (no 16-bit saturation).
INT8_DOT_PRODUCT = ("avx512_vnni", "avx_vnni", "amx_int8")
# Weight bits that cannot saturate a 16-bit pairwise accumulation of u8 x s8 products.
SAFE_WEIGHT_BITS = 7


@dataclass(frozen=True)
class CpuFeatures:
    """The machine type and the ISA flags of interest (lower-case /proc/cpuinfo names)."""

    machine: str
    flags: frozenset[str]

    @property
    def is_x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i686", "x86")

    @property
    def int8_dot_product(self) -> bool:
        """True when int8 kernels accumulate in 32 bits: x86 VNNI/AMX, or any ARM CPU (its NEON
        kernels widen to 16-bit products and add them into 32 bits, which cannot saturate)."""
        return not self.is_x86 or any(flag in self.flags for flag in INT8_DOT_PRODUCT)

    def int8_safe(self, weight_bits: int) -> bool:
        """Whether an int8 Q/DQ model with ``weight_bits``-bit weights computes its own semantics here."""
        return self.int8_dot_product or weight_bits <= SAFE_WEIGHT_BITS

    def describe(self) -> str:
        """Short text for tables, e.g. 'x86_64 avx2 avx512f avx512_vnni amx_int8'."""
        shown = [f for f in (*_X86_FLAGS, *_ARM_FLAGS) if f in self.flags]
        return " ".join([self.machine, *shown])

    def to_dict(self) -> dict:
        return {"machine": self.machine, "isa": sorted(self.flags), "int8_dot_product": self.int8_dot_product}


def _numpy_flags() -> set[str] | None:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as found  # numpy < 2
        except ImportError:
            return None
    return {ours for theirs, ours in _NUMPY_NAMES.items() if found.get(theirs)}


def cpuinfo_flags(cpuinfo: str) -> set[str]:
    """The flags of interest in /proc/cpuinfo text (x86 ``flags``, arm64 ``Features``)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split()) & set(_X86_FLAGS + _ARM_FLAGS)
    return set()


def detect(cpuinfo_path: str | Path = "/proc/cpuinfo", machine: str | None = None) -> CpuFeatures:
    """The running CPU's features (see the module docstring for where each flag comes from)."""
    try:
        text = Path(cpuinfo_path).read_text(errors="replace")
    except OSError:
        text = ""
    return features_from(_numpy_flags(), cpuinfo_flags(text), machine or platform.machine())


def features_from(numpy_flags: set[str] | None, cpuinfo_flags: set[str], machine: str) -> CpuFeatures:
    """Merge the two sources: numpy's is authoritative; /proc/cpuinfo's extras count only when it
    agrees with numpy on the flags both know (else it describes another CPU, e.g. under QEMU)."""
    if numpy_flags is None:
        return CpuFeatures(machine, frozenset(cpuinfo_flags))
    shared = set(_NUMPY_NAMES.values())
    if cpuinfo_flags and (cpuinfo_flags & shared) != (numpy_flags & shared):
        return CpuFeatures(machine, frozenset(numpy_flags))
    return CpuFeatures(machine, frozenset(numpy_flags | cpuinfo_flags))


def weight_bits(artifact) -> int:
    """The weight bits an int8 artifact was quantized with (bundles from before the choice was
    recorded used the full 8 bits)."""
    return int(artifact.built_with.get("weight_bits", 8))


def refuse_unsafe_int8(artifact, backend: str, features: CpuFeatures | None = None) -> None:
    """Raise BackendUnavailable when this CPU's int8 kernels would compute ``artifact`` wrongly,
    naming the safe alternatives; never run it silently."""
    from alexnet_deploy.errors import BackendUnavailable

    features = features or detect()
    bits = weight_bits(artifact)
    if features.int8_safe(bits):
        return
    raise BackendUnavailable(
        f"{artifact.file} has {bits}-bit weights, which {backend}'s int8 kernels compute wrongly on this CPU "
        f"({features.describe()}: no VNNI/AMX, so u8 x s8 products saturate a 16-bit sum); re-calibrate with "
        f"7-bit weights (`alexnet-deploy calibrate BUNDLE --calib DIR --weight-bits 7`), or run int8 on TensorRT "
        "or a CPU with VNNI/AMX")
