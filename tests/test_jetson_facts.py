"""The Jetson facts bench records, parsed from sample files in the real formats.

No Jetson is at hand, so each sample is written from where its format is documented:
- ``/etc/nv_tegra_release``: its first line is ``# R<major> (release), REVISION: <minor>.<patch>, GCID: <n>,
  BOARD: <board>, EABI: aarch64, DATE: <date>``, as NVIDIA's Jetson Linux guide shows for "which release
  am I running" and as jetson-stats' ``jtop/core/jetson_l4t.py`` splits it; the L4T version is
  ``<major>.<minor>.<patch>`` (36.4.3 = JetPack 6.2). The GCIDs and dates below are illustrative.
- ``/proc/device-tree/model``: the raw bytes of the device tree's ``model`` property, a NUL-terminated
  string (Devicetree Specification, "model" standard property); on a Jetson developer kit it names
  NVIDIA, e.g. "NVIDIA Jetson AGX Orin Developer Kit".
- ``nvpmodel -q``: ``NV Power Mode: <name>`` then the mode id alone on the next line, as jetson-stats'
  ``jtop/core/nvpmodel.py`` parses it; on Orin a warning such as ``NVPM WARN: fan mode is not set!``
  may come first.
- CPU clocks: cpufreq's ``cpuN/cpufreq/scaling_{cur,min,max}_freq`` in kHz, and ``cpu/online`` as a CPU
  list like ``0-11`` (Linux Documentation/admin-guide/pm/cpufreq.rst and
  Documentation/ABI/testing/sysfs-devices-system-cpu).
- GPU clocks: devfreq's ``/sys/class/devfreq/<device>/{cur,min,max}_freq`` in Hz
  (Documentation/ABI/testing/sysfs-class-devfreq); the Orin GPU's device is ``17000000.ga10b``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from alexnet_deploy.deploy.platform.system import (JetsonPaths, jetson_facts, parse_nvpmodel, parse_tegra_release,
                                          system_facts)

R36 = ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
       "DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n"
       "TARGET_USERSPACE_LIB_DIR_PATH=usr/lib/aarch64-linux-gnu/nvidia\n")
R35 = ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
       "DATE: Tue Aug  1 19:57:35 UTC 2023\n")
ORIN_MODEL = b"NVIDIA Jetson AGX Orin Developer Kit\x00"
NVPMODEL_Q = "NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n"
GPU = "17000000.ga10b"


def _write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def _nvpmodel(tmp_path: Path, output: str, exit_code: int = 0) -> tuple[str, ...]:
    """A real program that prints what nvpmodel -q prints."""
    script = tmp_path / "bin" / "nvpmodel"
    _write(script, f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\nexit {exit_code}\n")
    script.chmod(0o755)
    return (str(script), "-q")


def _orin(root: Path, locked: bool = True) -> Path:
    """An AGX Orin's files: 12 CPUs (kHz), the GPU's devfreq (Hz); jetson_clocks pins min = max."""
    _write(root / "etc/nv_tegra_release", R36)
    _write(root / "proc/device-tree/model", ORIN_MODEL)
    _write(root / "sys/devices/system/cpu/online", "0-11\n")
    for n in range(12):
        policy = root / f"sys/devices/system/cpu/cpu{n}/cpufreq"
        _write(policy / "scaling_cur_freq", "2201600\n")
        _write(policy / "scaling_min_freq", "2201600\n" if locked else "115200\n")
        _write(policy / "scaling_max_freq", "2201600\n")
    gpu = root / "sys/class/devfreq" / GPU
    _write(gpu / "cur_freq", "1300500000\n")
    _write(gpu / "min_freq", "1300500000\n" if locked else "306000000\n")
    _write(gpu / "max_freq", "1300500000\n")
    return root


def test_tegra_release_gives_the_l4t_version():
    assert parse_tegra_release(R36) == {"l4t": "36.4.3", "l4t_release": R36.splitlines()[0], "l4t_board": "generic"}
    assert parse_tegra_release(R35)["l4t"] == "35.4.1"
    assert parse_tegra_release("") == {}
    assert parse_tegra_release("something else\n")["l4t"] is None


def test_nvpmodel_output_gives_name_and_id():
    assert parse_nvpmodel(NVPMODEL_Q) == {"power_mode": "MAXN", "power_mode_id": 0}
    assert parse_nvpmodel("NV Power Mode: 15W\n2\n") == {"power_mode": "15W", "power_mode_id": 2}
    assert parse_nvpmodel("NVPM ERROR: failed to read PARAM\n") == {}


def test_locked_orin_is_recorded_with_power_mode_and_clocks(tmp_path):
    paths = JetsonPaths.under(_orin(tmp_path / "root"), nvpmodel=_nvpmodel(tmp_path, NVPMODEL_Q))
    facts = jetson_facts(paths)
    assert facts["jetson_model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert facts["l4t"] == "36.4.3" and facts["l4t_board"] == "generic"
    assert (facts["power_mode"], facts["power_mode_id"]) == ("MAXN", 0)
    assert facts["cpus_online"] == "0-11"
    clocks = facts["clocks_mhz"]
    assert list(clocks) == [f"cpu{n}" for n in range(12)] + [GPU]  # numeric order: cpu2 before cpu10
    assert clocks["cpu0"] == {"cur": 2201.6, "min": 2201.6, "max": 2201.6}
    assert clocks[GPU] == {"cur": 1300.5, "min": 1300.5, "max": 1300.5}
    assert facts["clocks_locked"] is True
    json.dumps(facts)  # bench writes it as JSON


def test_unlocked_clocks_and_missing_nvpmodel_are_said(tmp_path):
    paths = JetsonPaths.under(_orin(tmp_path / "root", locked=False),
                              nvpmodel=(str(tmp_path / "no-such-nvpmodel"), "-q"))
    facts = jetson_facts(paths)
    assert facts["clocks_locked"] is False
    assert facts["clocks_mhz"][GPU]["min"] == 306.0
    assert facts["power_mode"] is None and "not found" in facts["power_mode_reason"]


def test_failing_nvpmodel_is_a_reason_not_a_crash(tmp_path):
    command = _nvpmodel(tmp_path, "NVPM ERROR: Error opening /sys/devices/soc0/soc_id: 13\n", exit_code=1)
    facts = jetson_facts(JetsonPaths.under(_orin(tmp_path / "root"), nvpmodel=command))
    assert facts["power_mode"] is None
    assert "exit 1" in facts["power_mode_reason"] and "NVPM ERROR" in facts["power_mode_reason"]


def test_jetson_without_release_file_is_still_detected(tmp_path):
    """An L4T container may not carry /etc/nv_tegra_release; the device tree still names the board."""
    root = tmp_path / "root"
    _write(root / "proc/device-tree/model", b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    facts = jetson_facts(JetsonPaths.under(root, nvpmodel=(str(tmp_path / "none"), "-q")))
    assert facts["jetson_model"] == "NVIDIA Jetson Orin Nano Developer Kit" and "l4t" not in facts
    assert facts["clocks_mhz"] == {} and facts["clocks_locked"] is None


def test_other_boards_and_pcs_have_no_jetson_facts(tmp_path):
    pi = tmp_path / "pi"
    _write(pi / "proc/device-tree/model", b"Raspberry Pi 4 Model B Rev 1.4\x00")
    _write(pi / "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", "1500000\n")
    assert jetson_facts(JetsonPaths.under(pi)) == {}
    assert jetson_facts(JetsonPaths.under(tmp_path / "empty")) == {}


def test_bench_system_block_carries_the_jetson_facts(tmp_path):
    paths = JetsonPaths.under(_orin(tmp_path / "root"), nvpmodel=_nvpmodel(tmp_path, NVPMODEL_Q))
    facts = json.loads(json.dumps(system_facts(threads=2, jetson=paths)))
    assert facts["power_mode"] == "MAXN" and facts["clocks_locked"] is True and facts["l4t"] == "36.4.3"
    if not os.path.exists("/etc/nv_tegra_release"):  # this build machine is no Jetson
        assert "l4t" not in system_facts() and "power_mode" not in system_facts()
