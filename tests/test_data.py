"""Image folders: odd and broken files, splits, the uint8 cache, augmentation, eval = deploy.preprocess."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_image_folder

torch = pytest.importorskip("torch")

from alexnet_deploy.alexnet.data import (  # noqa: E402
    BatchStream, StreamedSet, choose_cache, crop_flip, decode_eval, ram_budget, random_resized_crop,
    resolve_splits, stratified_split, train_spec)
from alexnet_deploy.deploy.preprocess import PreprocessSpec, list_class_folder, preprocess  # noqa: E402
from alexnet_deploy.errors import DataError  # noqa: E402


def _odd_folder(root: Path) -> Path:
    """One class of every odd kind of file, next to a normal class."""
    write_image_folder(root, classes=1, per_class=3, size=40)
    odd = root / "odd"
    odd.mkdir()
    rgb = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(odd / "cmyk.jpg")
    palette = Image.fromarray(rgb).convert("P")
    palette.info["transparency"] = 0
    palette.save(odd / "palette.png", transparency=0)
    Image.fromarray(np.dstack([rgb, np.full((30, 50), 128, np.uint8)])).save(odd / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(odd / "gray.bmp")
    Image.fromarray(rgb).save(odd / "webp.webp")
    Image.fromarray(rgb).save(odd / "tiff.tif")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    (odd / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (odd / "empty.jpg").write_bytes(b"")
    (odd / ".hidden.jpg").write_bytes(buf.getvalue())
    (odd / "notes.txt").write_text("not an image")
    return root


def test_odd_files_are_decoded_or_skipped_and_counted(tmp_path):
    root = _odd_folder(tmp_path / "data")
    classes, samples = list_class_folder(root)
    names = sorted(p.name for p, _ in samples if p.parent.name == "odd")
    assert names == ["cmyk.jpg", "empty.jpg", "gray.bmp", "palette.png", "rgba.png", "tiff.tif",
                     "truncated.jpg", "webp.webp"]  # hidden file and .txt ignored
    decoded = decode_eval(samples, train_spec(36))
    assert len(decoded) == len(samples) - 2
    assert decoded.images.shape == (len(samples) - 2, 3, 36, 36) and decoded.images.dtype == torch.uint8
    assert sorted(Path(s.path).name for s in decoded.skipped) == ["empty.jpg", "truncated.jpg"]
    assert all(str(root) in s.reason for s in decoded.skipped)


def test_strict_makes_bad_files_fatal(tmp_path):
    root = _odd_folder(tmp_path / "data")
    _, samples = list_class_folder(root)
    with pytest.raises(DataError, match=r"(empty|truncated)\.jpg.*--strict"):
        decode_eval(samples, train_spec(36), strict=True)


def test_exif_orientation_is_applied(tmp_path):
    raw = np.zeros((20, 40, 3), np.uint8)
    raw[:, :20] = (255, 0, 0)  # left half red
    raw[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: left half becomes the top half
    Image.fromarray(raw).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=100)
    pixels = decode_eval([(tmp_path / "rot.jpg", 0)], PreprocessSpec(resize=20, crop=20)).images[0]
    assert pixels[0, 2, 2] > 200 and pixels[2, 2, 2] < 60  # top: red
    assert pixels[2, 17, 2] > 200 and pixels[0, 17, 2] < 60  # bottom: blue


def test_empty_class_folder_is_an_error(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=2, per_class=2)
    (root / "empty_class").mkdir()
    (root / "empty_class" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="empty_class: class folder has no images"):
        resolve_splits(root, val_split=0.5)


def test_stratified_split_is_seeded_disjoint_and_balanced(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=3, per_class=10)
    a = resolve_splits(root, val_split=0.2, seed=1)
    b = resolve_splits(root, val_split=0.2, seed=1)
    c = resolve_splits(root, val_split=0.2, seed=2)
    assert a == b and a.val != c.val
    assert not set(a.train) & set(a.val) and len(a.train) + len(a.val) == 30
    assert sorted(label for _, label in a.val) == [0, 0, 1, 1, 2, 2]
    train, held = stratified_split([(Path("x"), 0)], 0.5, 0)
    assert len(train) == 1 and held == []  # a single-image class keeps its image for training


def test_layouts_and_max_per_class(tmp_path):
    write_image_folder(tmp_path / "ds" / "train", classes=2, per_class=8)
    write_image_folder(tmp_path / "ds" / "val", classes=2, per_class=3, seed=1)
    splits = resolve_splits(tmp_path / "ds", max_per_class=5)
    assert (len(splits.train), len(splits.val)) == (10, 6)
    separate = resolve_splits(tmp_path / "ds" / "train", val=tmp_path / "ds" / "val")
    assert (len(separate.train), len(separate.val)) == (16, 6)
    with pytest.raises(DataError, match="--val-split"):
        resolve_splits(tmp_path / "ds" / "train")
    with pytest.raises(DataError, match="between 0 and 1"):
        resolve_splits(tmp_path / "ds" / "train", val_split=1.5)
    write_image_folder(tmp_path / "other", classes=3, per_class=2)
    with pytest.raises(DataError, match="differ"):
        resolve_splits(tmp_path / "ds" / "train", val=tmp_path / "other")


def _photo_like(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth gradients plus noise and edges: resampling differences would show."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) % 64 * 4], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("spec", [PreprocessSpec(resize=73, crop=64), PreprocessSpec(resize=256, crop=224)])
def test_eval_transform_equals_torchvision(tmp_path, spec):
    """The training-side eval pipeline (uint8 cache -> normalize) and deploy.preprocess both equal
    torchvision's Resize/CenterCrop/ToTensor/Normalize."""
    transforms = pytest.importorskip("torchvision.transforms")
    tv = transforms.Compose([transforms.Resize(spec.resize), transforms.CenterCrop(spec.crop),
                             transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])
    paths = []
    for i, size in enumerate([(32, 32), (300, 200), (123, 457), (640, 480)]):
        _photo_like(size, i).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    expected = torch.stack([tv(Image.open(p).convert("RGB")) for p in paths])
    ours = next(iter(BatchStream(decode_eval([(p, 0) for p in paths], spec), 8, spec)))[0]
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(preprocess(paths, spec)), expected, rtol=0, atol=1e-6)


def test_eval_transform_equals_torchvision_on_cifar(cifar_dir):
    transforms = pytest.importorskip("torchvision.transforms")
    spec = PreprocessSpec(resize=73, crop=64)
    paths = sorted((cifar_dir / "cat").glob("*.jpg"))[:16]
    tv = transforms.Compose([transforms.Resize(73), transforms.CenterCrop(64), transforms.ToTensor(),
                             transforms.Normalize(spec.mean, spec.std)])
    expected = torch.stack([tv(Image.open(p).convert("RGB")) for p in paths])
    ours = next(iter(BatchStream(decode_eval([(p, 0) for p in paths], spec), 16, spec)))[0]
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_crop_flip_takes_windows_of_the_source():
    source = torch.randint(0, 255, (64, 3, 10, 10), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = crop_flip(source, 6, torch.Generator().manual_seed(1))
    assert out.shape == (64, 3, 6, 6)
    flipped = 0
    for img, crop in zip(source, out):
        windows = [img[:, t:t + 6, l:l + 6] for t in range(5) for l in range(5)]
        plain = any(torch.equal(crop, w) for w in windows)
        mirrored = any(torch.equal(crop.flip(-1), w) for w in windows)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 16 < flipped < 48  # about half are flipped


def test_random_resized_crop_shapes_and_range():
    batch = torch.randint(0, 255, (8, 3, 40, 40), dtype=torch.uint8)
    out = random_resized_crop(batch, 32, torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 32, 32) and out.min() >= 0 and out.max() <= 255


def test_batch_stream_shards_are_disjoint_and_equal(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=2, per_class=7, size=36)
    _, samples = list_class_folder(root)
    data = decode_eval(samples, train_spec(36))
    spec = PreprocessSpec(resize=36, crop=32)
    shards = [BatchStream(data, 4, spec, shuffle=True, seed=3, rank=r, world=2).indices() for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 7
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    a = BatchStream(data, 4, spec, augment="crop-flip", shuffle=True, seed=3)
    b = BatchStream(data, 4, spec, augment="crop-flip", shuffle=True, seed=3)
    first_a, first_b = next(iter(a)), next(iter(b))
    assert torch.equal(first_a[0], first_b[0]) and first_a[0].shape == (4, 3, 32, 32)
    b.epoch = 1
    assert not torch.equal(next(iter(b))[0], first_a[0])
    assert len(a) == 4 and sum(len(y) for _, y in a) == 14


def test_streamed_set_gives_the_same_batches_as_the_ram_cache(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=2, per_class=7, size=40)
    _, samples = list_class_folder(root)
    spec = PreprocessSpec(resize=36, crop=32)
    cached = BatchStream(decode_eval(samples, train_spec(36)), 4, spec, augment="crop-flip", shuffle=True, seed=5)
    streamed = BatchStream(StreamedSet(samples, train_spec(36)), 4, spec, augment="crop-flip", shuffle=True, seed=5)
    pairs = list(zip(cached, streamed))
    assert len(pairs) == 4
    for (x_ram, y_ram), (x_stream, y_stream) in pairs:
        assert torch.equal(x_ram, x_stream) and torch.equal(y_ram, y_stream)
    shards = [list(BatchStream(StreamedSet(samples, train_spec(36)), 4, spec, rank=r, world=2)) for r in range(2)]
    assert [sum(len(y) for _, y in shard) for shard in shards] == [7, 7]


def test_streamed_set_reports_unreadable_files_once_and_keeps_batch_shape(tmp_path):
    root = _odd_folder(tmp_path / "data")
    _, samples = list_class_folder(root)
    spec = PreprocessSpec(resize=36, crop=32)
    train_set = StreamedSet(samples, train_spec(36))
    for _ in range(2):   # the second pass must not read (or report) the bad files again
        sizes = [len(y) for _, y in BatchStream(train_set, 4, spec, augment="crop-flip")]
        assert sizes == [4, 4, 3]   # bad slots refilled: every batch keeps its size
    assert sorted(Path(s.path).name for s in train_set.skipped) == ["empty.jpg", "truncated.jpg"]
    val_set = StreamedSet(samples, spec, fill=False)
    assert sum(len(y) for _, y in BatchStream(val_set, 4, spec)) == len(samples) - 2
    with pytest.raises(DataError, match=r"(empty|truncated)\.jpg.*--strict"):
        list(BatchStream(StreamedSet(samples, spec, strict=True), 4, spec))


def test_cache_choice_and_the_per_process_ram_budget(monkeypatch):
    assert choose_cache("auto", need=10, budget=100) == "ram"
    assert choose_cache("auto", need=1000, budget=100) == "stream"
    assert choose_cache("auto", need=1000, budget=None) == "ram"
    assert choose_cache("ram", need=1000, budget=100) == "ram"   # then decoding refuses with a clear error
    assert choose_cache("stream", need=10, budget=100) == "stream"
    with pytest.raises(DataError, match="--cache 'disk'"):
        choose_cache("disk", 1, 1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    alone = ram_budget()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")   # torchrun --nproc_per_node 4: four caches share the RAM
    shared = ram_budget()
    assert alone is not None and shared is not None and abs(shared - alone / 4) < 0.05 * alone


def test_one_ahead_keeps_order_overlaps_the_next_item_and_raises_in_place():
    import threading

    from alexnet_deploy.deploy.preprocess import one_ahead

    started = {i: threading.Event() for i in range(4)}

    def work(i: int) -> int:
        started[i].set()
        if i == 3:
            raise DataError("item 3 is unreadable")
        return i * 10

    results = one_ahead(work, range(4))
    assert next(results) == 0
    # While the caller holds item 0, item 1 is already being worked on (no timing assumptions: an event).
    assert started[1].wait(timeout=30)
    assert [next(results), next(results)] == [10, 20]
    with pytest.raises(DataError, match="item 3"):
        next(results)
    assert list(one_ahead(work, [])) == []


def test_cache_gpu_is_chosen_only_when_training_on_a_gpu_and_it_fits():
    from alexnet_deploy.alexnet.data import choose_cache

    assert choose_cache("auto", 100, 1000, gpu_budget=500) == "gpu"
    assert choose_cache("auto", 800, 1000, gpu_budget=500) == "ram"      # over the GPU's share: RAM
    assert choose_cache("auto", 800, None, gpu_budget=None) == "ram"
    with pytest.raises(DataError, match="--cache gpu .* needs --device cuda"):
        choose_cache("gpu", 100, 1000, gpu_budget=None)


def test_the_transforms_run_where_the_batch_is(tmp_path):
    """crop/flip and normalize draw their randomness on the CPU and compute on the batch's device:
    here a batch that lives on the 'meta' device keeps it, so a CUDA batch keeps CUDA."""
    from alexnet_deploy.alexnet.data import crop_flip, normalize
    from alexnet_deploy.deploy.preprocess import PreprocessSpec

    batch = torch.zeros((4, 3, 40, 40), dtype=torch.uint8, device="meta")
    out = normalize(crop_flip(batch, 32, torch.Generator().manual_seed(0)), PreprocessSpec(40, 32))
    assert out.device.type == "meta" and out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
