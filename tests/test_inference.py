"""Inference modes: test-scale arithmetic, slide windows and averaging, flip/multi-scale TTA, Segmenter inputs."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conftest import TINY
from segformer import Segmenter, create_model
from segformer.imageio import normalize
from segformer.inference import InferenceOptions, predict_batch, predict_logits, resized_size, slide_windows


class PoolModel(nn.Module):
    """A flip-symmetric stand-in: 4x4 average pooling then a 1x1 conv, logits at 1/4 like SegFormer."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)
        self.config = SimpleNamespace(num_classes=num_classes, class_names=None)

    def forward(self, x):
        return self.conv(F.avg_pool2d(x, 4, ceil_mode=True))


class SkewModel(PoolModel):
    """Not flip-symmetric: each output column also sees its right neighbour."""

    def forward(self, x):
        y = super().forward(x)
        return y + 2 * torch.roll(y, -1, dims=-1)


class WindowMean(nn.Module):
    """Logits equal, everywhere, to the mean of channel 0 of the window: exposes how windows are averaged."""

    def forward(self, x):
        b, _, h, w = x.shape
        return x[:, :1].mean(dim=(2, 3), keepdim=True).expand(b, 1, (h + 3) // 4, (w + 3) // 4)


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return create_model("b0", num_classes=4, **TINY).eval()


def test_resized_size_follows_mmcv_rescale_and_alignment():
    # ADE20K (2048, 512): short side to 512 unless the long side would pass 2048
    assert resized_size(300, 400, (2048, 512)) == (512, 683)  # factor 512/300, 400*1.7067=682.67 -> 683
    assert resized_size(300, 400, (2048, 512), size_divisor=32) == (512, 704)
    assert resized_size(100, 1000, (2048, 512)) == (205, 2048)  # long side limits: 2048/1000
    assert resized_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert resized_size(1024, 2048, (2048, 1024), ratio=0.75) == (768, 1536)
    assert resized_size(50, 70, None, ratio=1.5) == (75, 105)
    assert resized_size(50, 70, None) == (50, 70)


def test_slide_windows_cover_the_image_and_end_at_the_border():
    assert slide_windows(10, 7, (4, 4), (3, 3)) == [
        (0, 4, 0, 4), (0, 4, 3, 7),
        (3, 7, 0, 4), (3, 7, 3, 7),
        (6, 10, 0, 4), (6, 10, 3, 7),
    ]  # fmt: skip
    assert slide_windows(11, 4, (4, 4), (3, 3))[-1] == (7, 11, 0, 4)  # last window clamped to end at 11
    city = [(0, 1024, 0, 1024), (0, 1024, 768, 1792), (0, 1024, 1024, 2048)]  # Cityscapes 1024x2048, 1024/768
    assert slide_windows(1024, 2048, (1024, 1024), (768, 768)) == city


def test_slide_averages_overlapping_windows_by_count():
    x = torch.arange(70, dtype=torch.float32).view(1, 1, 10, 7).expand(1, 3, 10, 7).contiguous()
    options = InferenceOptions(mode="slide", crop=(4, 4), stride=(3, 3))
    out = predict_batch(WindowMean(), x, options, softmax=False)[0, 0]
    img = x[0, 0].numpy()
    total, count = np.zeros((10, 7)), np.zeros((10, 7))
    for y1, y2, x1, x2 in [(0, 4, 0, 4), (0, 4, 3, 7), (3, 7, 0, 4), (3, 7, 3, 7), (6, 10, 0, 4), (6, 10, 3, 7)]:
        total[y1:y2, x1:x2] += img[y1:y2, x1:x2].mean()
        count[y1:y2, x1:x2] += 1
    np.testing.assert_allclose(out.numpy(), total / count, rtol=1e-6)
    assert count.min() >= 1 and count.max() == 4


def test_slide_equals_whole_when_one_window_covers_the_image(b0):
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    whole = predict_logits(b0, image)
    slide = predict_logits(b0, image, mode="slide", crop=(64, 96), stride=(32, 32))
    torch.testing.assert_close(slide, whole, atol=1e-5, rtol=1e-5)
    assert whole.shape == (4, 64, 96)
    assert torch.allclose(whole.sum(0), torch.ones(64, 96), atol=1e-5)  # softmax probabilities


def test_slide_pads_images_smaller_than_the_crop(b0):
    image = np.random.default_rng(1).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    x = normalize(image)[None]
    padded = F.pad(x, (0, 64 - 52, 0, 64 - 40))  # bottom/right, zeros = mean colour
    with torch.no_grad():
        logits = F.interpolate(b0(padded), size=(64, 64), mode="bilinear", align_corners=False)[:, :, :40, :52]
    slide = predict_logits(b0, image, mode="slide", crop=64, stride=48)
    torch.testing.assert_close(slide, logits.softmax(1)[0], atol=1e-5, rtol=1e-5)


def test_whole_at_test_scale_resizes_in_and_back(b0):
    image = np.random.default_rng(2).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    x = normalize(image)[None]
    size = resized_size(30, 45, (128, 64), size_divisor=32)
    assert size == (64, 96)
    with torch.no_grad():
        logits = b0(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    logits = F.interpolate(logits, size=(30, 45), mode="bilinear", align_corners=False)
    out = predict_logits(b0, image, scale=(128, 64), size_divisor=32)
    torch.testing.assert_close(out, logits.softmax(1)[0], atol=1e-5, rtol=1e-5)


def test_flip_tta_on_a_symmetric_model_changes_nothing():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 48)
    model = PoolModel()
    plain = predict_batch(model, x, InferenceOptions())
    flipped = predict_batch(model, x, InferenceOptions(flip=True))
    torch.testing.assert_close(flipped, plain, atol=1e-6, rtol=1e-5)

    skew = SkewModel()
    with torch.no_grad():
        a = F.interpolate(skew(x), size=(32, 48), mode="bilinear", align_corners=False).softmax(1)
        b = F.interpolate(skew(x.flip(-1)), size=(32, 48), mode="bilinear", align_corners=False).softmax(1).flip(-1)
    out = predict_batch(skew, x, InferenceOptions(flip=True))
    torch.testing.assert_close(out, (a + b) / 2, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(out, a, atol=1e-3)  # flipping does something on a model that is not symmetric


def test_multi_scale_averages_probabilities_at_the_original_size():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 40)
    model = SkewModel()
    out = predict_batch(model, x, InferenceOptions(scales=(0.5, 1.0, 1.5)))
    expected = 0
    with torch.no_grad():
        for size in [(16, 20), (32, 40), (48, 60)]:
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            logits = F.interpolate(model(xs), size=size, mode="bilinear", align_corners=False)
            expected = expected + F.interpolate(logits, size=(32, 40), mode="bilinear", align_corners=False).softmax(1)
    torch.testing.assert_close(out, expected / 3, atol=1e-6, rtol=1e-5)
    assert out.shape == (2, 3, 32, 40)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="crop"):
        InferenceOptions(mode="slide")
    with pytest.raises(ValueError, match="gaps"):
        InferenceOptions(mode="slide", crop=64, stride=96)
    with pytest.raises(ValueError, match="mode"):
        InferenceOptions(mode="sliding")
    with pytest.raises(ValueError, match="scales"):
        InferenceOptions(scales=(0.0, 1.0))


def test_segmenter_takes_paths_pil_and_arrays_of_any_kind(b0, tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    seg = Segmenter(b0, device="cpu")
    labels = seg(rgb)
    assert labels.shape == (48, 64) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 4

    # EXIF orientation 6 (rotate 90 clockwise to display): a 64x48 file is a 48x64 (W x H) picture upright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert seg(tmp_path / "rotated.jpg").shape == (64, 48)
    assert seg(str(tmp_path / "rotated.jpg")).shape == (64, 48)

    gray = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    np.testing.assert_array_equal(seg(Image.fromarray(gray)), seg(np.repeat(gray[:, :, None], 3, axis=2)))
    rgba = np.concatenate([rgb, np.full((48, 64, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(seg(rgba), labels)
    deep = gray.astype(np.uint16) * 257  # 16-bit scaled back to the same 8-bit values
    np.testing.assert_array_equal(seg(deep), seg(Image.fromarray(gray)))


def test_batched_prediction_equals_one_by_one(b0):
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in [(40, 56, 3), (40, 56, 3), (64, 32, 3)]]
    seg = Segmenter(b0, batch_size=4)
    batched = seg.predict_arrays(images)
    for image, labels in zip(images, batched, strict=True):
        assert labels.shape == image.shape[:2]
        np.testing.assert_array_equal(labels, seg(image))
    probs = seg.probabilities(images[2])
    assert probs.shape == (4, 64, 32)
    np.testing.assert_array_equal(probs.argmax(0).numpy(), batched[2])


def test_whole_mode_agrees_with_transformers_post_processing(b0, tmp_path):
    import transformers  # dev dependency: the independent reference

    b0.save_pretrained(tmp_path)
    reference = transformers.SegformerForSemanticSegmentation.from_pretrained(tmp_path).eval()
    processor = transformers.SegformerImageProcessor(do_resize=False, do_reduce_labels=False)
    image = np.random.default_rng(5).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    with torch.no_grad():
        inputs = processor(images=image, return_tensors="pt")
        outputs = reference(**inputs)
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(45, 70)])[0]
    labels = Segmenter(b0)(image)
    assert (labels == expected.numpy()).mean() > 0.999  # same normalisation, resize and argmax (ties aside)


def test_bf16_autocast_stays_close_and_returns_float32(b0):
    x = torch.randn(1, 3, 64, 96)
    full = predict_batch(b0, x, InferenceOptions())
    half = predict_batch(b0, x, InferenceOptions(amp="bf16"))
    assert half.dtype == torch.float32
    assert 0 < (half - full).abs().max() < 0.05  # autocast really ran, and probabilities barely moved
    with pytest.raises(ValueError, match="amp"):
        InferenceOptions(amp="int8")


def test_chunked_label_maps_equal_the_argmax_of_full_size_scores(b0):
    """predict_labels never builds (B, K, H, W) at the original size; its labels equal the full computation's."""
    from segformer.inference import argmax_resized as _argmax_resized
    from segformer.inference import predict_labels

    x = torch.randn(2, 3, 61, 83)
    options = InferenceOptions(scale=(48, 32))
    scores = predict_batch(b0, x, options, softmax=False)  # logits resized to (32, 44), then to (61, 83)
    decided = ~_near_ties(scores)  # both resizes in one step round differently in the last bit
    assert decided.float().mean() > 0.999
    torch.testing.assert_close(predict_labels(b0, x, options)[decided], scores.argmax(dim=1)[decided], atol=0, rtol=0)
    logits = torch.randn(1, 37, 9, 7)
    expected = F.interpolate(logits, size=(50, 41), mode="bilinear", align_corners=False).argmax(dim=1)
    torch.testing.assert_close(_argmax_resized(logits, (50, 41), band_bytes=5 * 37 * 41 * 4), expected, atol=0, rtol=0)


def test_stored_test_protocol_round_trips_and_drives_segmenter(b0, tmp_path):
    """The protocol saved with a model is what Segmenter (and predict) run by default; flags override it."""
    from segformer import InferenceOptions as TestProtocol  # the stored protocol is the one settings type
    from segformer import load_model

    protocol = TestProtocol(mode="whole", scale=(64, 48), size_divisor=16)
    model = create_model("b0", num_classes=4, **TINY).eval()
    model.load_state_dict(b0.state_dict())
    model.config = model.config.replace(test_protocol=protocol)
    loaded = load_model(model.save_pretrained(tmp_path / "m"))
    assert loaded.config.test_protocol == protocol
    seg = Segmenter(loaded)
    assert (seg.options.scale, seg.options.size_divisor, seg.options.mode) == ((64, 48), 16, "whole")
    image = np.random.default_rng(0).integers(0, 256, (150, 211, 3), dtype=np.uint8)
    labels = seg(image)
    assert labels.shape == (150, 211)  # written at the original size
    explicit = Segmenter(b0, InferenceOptions(scale=(64, 48), size_divisor=16))(image)
    np.testing.assert_array_equal(labels, explicit)
    assert Segmenter(loaded, InferenceOptions()).options.scale is None  # native size on request
    assert Segmenter(loaded, flip=True).options.scale == (64, 48)  # overrides keep the rest of the protocol


def test_official_checkpoint_of_a_known_dataset_gets_the_papers_protocol():
    from segformer.data import DATASETS

    ade = create_model("b0", num_classes=150, class_names=DATASETS["ade20k"].class_names, **TINY)
    options = Segmenter(ade).options
    assert (options.mode, options.scale, options.size_divisor) == ("whole", (2048, 512), 32)
    city = create_model("b0", num_classes=19, class_names=DATASETS["cityscapes"].class_names, **TINY)
    options = Segmenter(city).options
    assert (options.mode, options.crop, options.stride) == ("slide", (1024, 1024), (768, 768))
    assert Segmenter(create_model("b0", num_classes=19, **TINY)).options.scale is None  # unknown classes: own size


def _near_ties(scores: torch.Tensor, margin: float = 1e-5) -> torch.Tensor:
    """(B, H, W) pixels whose two best classes are within `margin` x max |score|: float rounding decides there."""
    top = scores.topk(2, dim=1).values
    return (top[:, 0] - top[:, 1]) <= margin * scores.abs().max()


@pytest.mark.parametrize(
    "source, size",
    [
        ((128, 176), (512, 704)),
        ((37, 53), (1100, 1500)),
        ((13, 17), (101, 77)),
        ((64, 64), (63, 65)),
        ((9, 7), (9, 31)),
        ((40, 30), (35, 300)),
    ],
)
def test_banded_argmax_equals_the_argmax_of_full_size_interpolation(source, size):
    """Odd ratios, down- and upsampling (pruned and dense paths), one axis unchanged, many small bands: labels are
    F.interpolate's argmax."""
    from segformer.inference import argmax_resized as _argmax_resized

    torch.manual_seed(sum(source) + sum(size))
    logits = torch.randn(2, 7, *source)
    scores = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    labels = _argmax_resized(logits, size, band_bytes=1 << 17)
    decided = ~_near_ties(scores)
    assert decided.float().mean() > 0.999
    torch.testing.assert_close(labels[decided], scores.argmax(dim=1)[decided], atol=0, rtol=0)


@pytest.mark.parametrize(
    "source, via, size",
    [
        ((128, 176), (512, 704), (480, 640)),  # a photo a little smaller than the model input
        ((16, 20), (64, 80), (120, 150)),  # a photo larger than the model input
        ((32, 43), (128, 171), (1000, 1333)),  # a big photo: the first resize in full
        ((9, 7), (36, 28), (70, 20)),  # one axis up, the other down
        ((13, 17), (52, 65), (20, 15)),  # small output: the dense path
        ((10, 12), (40, 45), (41, 44)),  # ratios near 1 after the first resize
    ],
)
def test_two_resizes_in_one_step_equal_two_interpolations(source, via, size):
    """`via`: the logits resized to the model input size, then to the image's, as mmseg does, with no (B, K) map at
    the input size; the labels are the argmax of two F.interpolate calls."""
    from segformer.inference import argmax_resized as _argmax_resized

    torch.manual_seed(sum(source) + sum(size))
    logits = torch.randn(2, 7, *source)
    kw = {"mode": "bilinear", "align_corners": False}
    scores = F.interpolate(F.interpolate(logits, size=via, **kw), size=size, **kw)
    labels = _argmax_resized(logits, size, band_bytes=1 << 17, via=via)
    decided = ~_near_ties(scores)
    assert decided.float().mean() > 0.999
    torch.testing.assert_close(labels[decided], scores.argmax(dim=1)[decided], atol=0, rtol=0)
    single = F.interpolate(logits, size=size, **kw).argmax(dim=1)
    assert (labels != single).any() or size == via  # one resize would give other labels: the test can tell


def test_banded_argmax_resolves_exact_ties_to_the_lower_class():
    """Integer logits and a duplicated class tie exactly in many pixels; torch.argmax picks the lower id there."""
    from segformer.inference import argmax_resized as _argmax_resized

    torch.manual_seed(1)
    logits = torch.randint(0, 3, (1, 6, 9, 12)).float()
    logits[:, 4] = logits[:, 1]
    scores = F.interpolate(logits, size=(40, 48), mode="bilinear", align_corners=False)
    tied = (scores == scores.amax(dim=1, keepdim=True)).sum(dim=1) > 1
    assert tied.float().mean() > 0.2  # the test exercises ties
    torch.testing.assert_close(_argmax_resized(logits, (40, 48)), scores.argmax(dim=1), atol=0, rtol=0)


def test_big_photo_through_segmenter_equals_full_size_interpolation(b0, tmp_path):
    """A 1500x1100 photo file with the ADE20K protocol stored: the label map is full size and equals the argmax of
    the logits interpolated to full size in one F.interpolate call (reference computed independently here)."""
    from segformer import InferenceOptions as TestProtocol  # the stored protocol is the one settings type

    model = create_model("b0", num_classes=4, **TINY).eval()
    model.load_state_dict(b0.state_dict())
    model.config = model.config.replace(test_protocol=TestProtocol(scale=(2048, 512), size_divisor=32))
    rng = np.random.default_rng(3)
    image = np.kron(rng.integers(0, 256, (55, 75, 3)), np.ones((20, 20, 1))).astype(np.uint8)  # blocky 1100x1500
    Image.fromarray(image).save(tmp_path / "photo.png")
    labels = Segmenter(model)(tmp_path / "photo.png")

    x = normalize(image).unsqueeze(0)  # (1, 3, 1100, 1500)
    x = F.interpolate(x, size=(512, 704), mode="bilinear", align_corners=False)  # keep-ratio 512x698, 32-aligned
    with torch.no_grad():
        logits = F.interpolate(model(x), size=(512, 704), mode="bilinear", align_corners=False)
    scores = F.interpolate(logits, size=(1100, 1500), mode="bilinear", align_corners=False)
    assert labels.shape == (1100, 1500) and labels.dtype == np.int64
    decided = ~_near_ties(scores)[0].numpy()
    assert decided.mean() > 0.999
    np.testing.assert_array_equal(labels[decided], scores.argmax(dim=1)[0].numpy()[decided])


def test_overlay_in_row_bands_equals_the_whole_image_blend():
    """visualize.overlay blends in bands of rows; the result is the one-shot formula's, ignore pixels included."""
    from segformer.visualize import OVERLAY_ROWS, overlay

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (OVERLAY_ROWS * 2 + 7, 33, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, image.shape[:2])
    labels[::3, ::4] = 255
    palette = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    colours = np.concatenate([palette, np.zeros((251, 3), np.uint8)])[labels].astype(np.float64)
    expected = np.clip(image * 0.4 + colours * 0.6 + 0.5, 0, 255).astype(np.uint8)
    expected[labels == 255] = image[labels == 255]
    got = overlay(image, labels, palette, alpha=0.6, legend=False)
    assert np.abs(got.astype(int) - expected).max() <= 1  # float32 against float64 rounding
    assert (got == expected).mean() > 0.999
