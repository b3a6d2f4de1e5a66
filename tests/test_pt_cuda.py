"""The pt backend on CUDA (``pt-cuda``): refused with its reason where torch sees no GPU, and on a
GPU (tests marked ``cuda``, run by ``make gpu-check``) its fp16/fp32 golden vectors verified."""

from __future__ import annotations

import pytest

import runtime_bundle
from alexnet_deploy.deploy import load
from alexnet_deploy.deploy.evaluate.bench import BenchConfig, run_bench
from alexnet_deploy.errors import BackendUnavailable

torch = pytest.importorskip("torch")
no_gpu = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return runtime_bundle.bundle(tmp_path_factory)


@pytest.mark.skipif(not no_gpu, reason="a CUDA GPU is visible: the refusal cannot happen here")
def test_pt_cuda_says_why_it_cannot_run_without_a_gpu(bundle):
    with pytest.raises(BackendUnavailable, match="pt-cuda needs a CUDA GPU"):
        load(bundle, backend="pt-cuda", precision="fp16")
    with pytest.raises(BackendUnavailable, match="pt-cuda needs a CUDA GPU"):
        load(bundle, backend="pt-cuda-graphs", precision="fp32")
    with pytest.raises(BackendUnavailable, match="CUDA graphs need the pt backend on a GPU"):
        load(bundle, backend="pt", cuda_graphs=True)
    with pytest.raises(BackendUnavailable, match="pt runs fp16 only on a GPU"):
        load(bundle, backend="pt", precision="fp16")
    report = run_bench(bundle, BenchConfig(backends=("pt", "pt-cuda"), batches=(1,), warmup_s=0.01, min_iters=2,
                                           min_time_s=0.01))
    rows = {(r.backend, r.precision): r for r in report.rows}
    assert ("pt", "fp16") not in rows and rows[("pt", "fp32")].status == "ok"
    assert {rows[("pt-cuda", p)].status for p in ("fp32", "fp16")} == {"unavailable"}
    assert "needs a CUDA GPU" in rows[("pt-cuda", "fp16")].reason


@pytest.mark.cuda
@pytest.mark.skipif(no_gpu, reason="needs a CUDA GPU visible to torch")
@pytest.mark.parametrize("backend", ["pt-cuda", "pt-cuda-graphs"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_pt_cuda_golden_vectors(bundle, backend, precision):
    from alexnet_deploy.deploy.evaluate.verify import verify_bundle

    report = verify_bundle(bundle, backends=(backend,), precisions=(precision,))
    golden = [c for c in report.checks if c.check == "golden"]
    assert golden and all(c.status == "pass" for c in golden), [(c.target, c.detail) for c in golden]
    with load(bundle, backend=backend, precision=precision) as model:
        assert model.provider.startswith("torch ") and "cuda" in model.provider


@pytest.mark.cuda
@pytest.mark.skipif(no_gpu, reason="needs a CUDA GPU visible to torch")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graph_replay_gives_the_eager_logits_for_each_batch_size(bundle, precision):
    import numpy as np

    rng = np.random.default_rng(0)
    with load(bundle, backend="pt-cuda", precision=precision) as eager, \
            load(bundle, backend="pt-cuda-graphs", precision=precision) as graphed:
        for batch in (1, 4, 1, 4):   # the second visit of each size replays its captured graph
            x = rng.standard_normal((batch, *eager.input_shape)).astype(np.float32)
            np.testing.assert_allclose(graphed.infer(x), eager.infer(x), rtol=1e-3, atol=1e-3)
