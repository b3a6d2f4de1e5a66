"""The one place optional imports are made (deploy.lazy) and the one precision table (deploy.precision)."""

from __future__ import annotations

import pytest

from alexnet_deploy.deploy import lazy
from alexnet_deploy.deploy.precision import NAMES, PRECISIONS, onnx_file, precision
from alexnet_deploy.errors import AlexNetDeployError, MissingDependency


def test_require_names_the_package_and_how_to_install_it():
    with pytest.raises(MissingDependency) as caught:
        lazy.require("alexnet_deploy_no_such_module", package="openvino", needed_for="--backend ov")
    message = str(caught.value)
    assert message.startswith("openvino is not installed (--backend ov needs it)")
    assert "pip install 'alexnet-deploy[ov]'" in message


def test_require_takes_the_first_module_that_imports():
    # A package whose module moved between releases (cuda-python) is found under either name.
    assert lazy.require("alexnet_deploy_no_such_module", "json", package="json").__name__ == "json"


def test_optional_returns_none_for_a_missing_module():
    assert lazy.optional("alexnet_deploy_no_such_module") is None
    assert lazy.optional("json").__name__ == "json"


def test_every_precision_has_one_row_with_its_file_and_thresholds():
    assert NAMES == ("fp32", "fp16", "int8")
    assert [onnx_file(p) for p in NAMES] == ["model.onnx", "model.fp16.onnx", "model.int8.onnx"]
    # Looser precisions are judged more loosely, never the other way round.
    golden = [PRECISIONS[p].golden for p in NAMES]
    assert [g.min_agreement for g in golden] == sorted((g.min_agreement for g in golden), reverse=True)
    assert [PRECISIONS[p].conformance for p in NAMES] == sorted(PRECISIONS[p].conformance for p in NAMES)
    # int8 is judged by calibration's accuracy budget, not by an export-time parity bound.
    assert PRECISIONS["int8"].export is None and PRECISIONS["fp16"].export.min_top1 < 1.0


def test_an_unknown_precision_names_the_flag():
    with pytest.raises(AlexNetDeployError, match=r"--precision 'bf16': expected one of fp32, fp16, int8"):
        precision("bf16")
