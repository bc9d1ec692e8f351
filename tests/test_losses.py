"""Training losses against independent references on random logits with ignored pixels and absent classes:
segmentation_models_pytorch 0.6.0 (Dice, Focal, Lovasz; the dev extra pins it) and re-implementations, written
here in float64 NumPy from the definitions, of mmseg's cross-entropy (class weights, avg_non_ignore) and OHEM
sampler. Also the `--loss` / `--class-weights` parsing, ENet weights, and their errors through the CLI."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segformer.cli import main
from segformer.training import TrainConfig, segmentation_loss
from segformer.training.losses import (
    LOSSES,
    LossOptions,
    build_loss,
    check_class_weights,
    cross_entropy,
    dice_loss,
    focal_loss,
    lovasz_softmax,
    ohem_cross_entropy,
    ohem_selection,
    parse_class_weights,
    parse_loss_spec,
    resolve_class_weights,
)

SMP_VERSION = "0.6.0"
TOL = 1e-5
K = 5  # classes 2 and 4 never appear in the labels


def smp_losses():
    """segmentation_models_pytorch.losses. The package's __init__ imports timm and torchvision (encoders); when
    those are absent, the losses subpackage (which only needs torch) is loaded on its own."""
    if importlib.util.find_spec("segmentation_models_pytorch") is None:
        pytest.skip("segmentation_models_pytorch is not installed (pip install 'segformer[dev]')")
    version = importlib.metadata.version("segmentation-models-pytorch")
    assert version == SMP_VERSION, (
        f"the references are pinned to smp {SMP_VERSION} (focal changed in 0.6), got {version}"
    )
    try:
        return importlib.import_module("segmentation_models_pytorch.losses")
    except Exception:  # ImportError, or a torchvision built for another torch failing to load its ops
        pass
    name = "_smp_losses_reference"
    if name not in sys.modules:
        root = Path(importlib.util.find_spec("segmentation_models_pytorch").submodule_search_locations[0]) / "losses"
        spec = importlib.util.spec_from_file_location(
            name, root / "__init__.py", submodule_search_locations=[str(root)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def random_batch(seed: int, ignored: float = 0.25, size=(19, 23), low=(7, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (2, K, 7, 8) (upsampled to the labels by the losses) and labels (2, 19, 23) over classes {0, 1, 3},
    with a fraction of 255."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, K, *low, generator=g) * 2.5
    labels = torch.tensor([0, 1, 3])[torch.randint(0, 3, (2, *size), generator=g)]
    labels[torch.rand(2, *size, generator=g) < ignored] = 255
    return logits, labels


def upsampled(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)


def np_inputs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N*H*W, K) float64 log-probabilities, labels, and the valid mask, flattened."""
    z = upsampled(logits, labels).double().permute(0, 2, 3, 1).reshape(-1, logits.shape[1]).numpy()
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    y = labels.reshape(-1).numpy()
    return logp, y, y != 255


def mmseg_ce(logits, labels, class_weight=None, avg_non_ignore=True, seg_weight=None) -> float:
    """mmseg CrossEntropyLoss (facts 1): l_i = w[y_i] * -log p_i[y_i] (0 when ignored), times the sampler weight;
    sum / |V| with avg_non_ignore, sum / (N*H*W) without; no division by sum w[y]."""
    logp, y, valid = np_inputs(logits, labels)
    total = 0.0
    for i in np.flatnonzero(valid):
        w = 1.0 if class_weight is None else class_weight[y[i]]
        s = 1.0 if seg_weight is None else seg_weight[i]
        total += w * s * -logp[i, y[i]]
    denominator = valid.sum() if avg_non_ignore else y.size
    return total / max(denominator, 1)


def mmseg_ohem(logits, labels, thresh, min_kept) -> np.ndarray:
    """mmseg OHEMPixelSampler with thresh (facts 1): q = p(true class) over V sorted ascending; threshold =
    max(q_sorted[min(min_kept * N, |V| - 1)], thresh); weight 1 where q < threshold."""
    logp, y, valid = np_inputs(logits, labels)
    weight = np.zeros(y.size)
    q = np.exp(logp[np.flatnonzero(valid), y[valid]])
    if q.size == 0:
        return weight
    kept = min_kept * labels.shape[0]
    threshold = max(np.sort(q)[min(kept, q.size - 1)], thresh)
    weight[np.flatnonzero(valid)] = q < threshold
    return weight


# --------------------------------------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_segmentation_loss_is_the_mean_over_labelled_pixels_and_ce_equals_it(seed):
    logits, labels = random_batch(seed)
    reference = F.cross_entropy(upsampled(logits, labels), labels, ignore_index=255)  # torch's mean over V
    assert abs(segmentation_loss(logits, labels).item() - reference.item()) < TOL
    assert abs(cross_entropy(logits, labels).item() - reference.item()) < TOL
    assert abs(build_loss("ce")(logits, labels).item() - reference.item()) < TOL


@pytest.mark.parametrize("avg_non_ignore", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_follows_mmseg_weights_and_averaging(weighted, avg_non_ignore):
    logits, labels = random_batch(3)
    weights = (0.5, 2.0, 7.0, 1.5, 0.0) if weighted else None
    options = LossOptions(class_weights=weights, avg_non_ignore=avg_non_ignore)
    got = cross_entropy(logits, labels, options).item()
    assert abs(got - mmseg_ce(logits, labels, weights, avg_non_ignore)) < TOL
    if weighted and avg_non_ignore:  # not torch's weighted mean, which divides by sum w[y]
        torch_mean = F.cross_entropy(upsampled(logits, labels), labels, torch.tensor(weights), ignore_index=255)
        assert abs(got - torch_mean.item()) > 1e-2


@pytest.mark.parametrize(
    ("thresh", "min_kept"),
    [(0.7, 100_000), (0.7, 20), (0.3, 20), (0.99, 5), (0.05, 300)],  # |V| <= kept; thresh or min_kept decides
)
@pytest.mark.parametrize("avg_non_ignore", [True, False])
def test_ohem_matches_mmseg_sampler(thresh, min_kept, avg_non_ignore):
    logits, labels = random_batch(4)
    weights = (1.0, 3.0, 1.0, 0.5, 1.0)
    options = LossOptions(
        class_weights=weights, avg_non_ignore=avg_non_ignore, ohem_thresh=thresh, ohem_min_kept=min_kept
    )
    expected_sel = mmseg_ohem(logits, labels, thresh, min_kept)
    sel = ohem_selection(upsampled(logits, labels), labels, options).reshape(-1).numpy()
    assert np.array_equal(sel, expected_sel)
    assert 0 < sel.sum() <= (labels != 255).sum()
    expected = mmseg_ce(logits, labels, weights, avg_non_ignore, seg_weight=expected_sel)
    assert abs(ohem_cross_entropy(logits, labels, options).item() - expected) < TOL


def test_ohem_keeps_all_but_the_most_confident_pixel_when_few_are_labelled():
    logits, labels = random_batch(5)
    sel = ohem_selection(upsampled(logits, labels), labels, LossOptions(ohem_min_kept=10**6))
    valid = labels != 255
    assert sel[valid].sum() == valid.sum() - 1 and sel[~valid].sum() == 0


# ------------------------------------------------------------------------------------------ smp references


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("weights", [None, (0.5, 2.0, 7.0, 1.5, 1.0)])
def test_dice_matches_smp(seed, weights):
    smp = smp_losses()
    logits, labels = random_batch(seed)
    reference = smp.DiceLoss("multiclass", smooth=0.0, ignore_index=255, class_weights=weights)
    expected = reference(upsampled(logits, labels), labels).item()
    assert abs(dice_loss(logits, labels, LossOptions(class_weights=weights)).item() - expected) < TOL


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("weights", [None, (0.5, 2.0, 7.0, 1.5, 1.0)])
def test_focal_matches_smp(seed, weights):
    smp = smp_losses()
    logits, labels = random_batch(seed)
    reference = smp.FocalLoss("multiclass", gamma=2.0, ignore_index=255, class_weights=weights)
    expected = reference(upsampled(logits, labels), labels).item()
    assert abs(focal_loss(logits, labels, LossOptions(class_weights=weights)).item() - expected) < TOL


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lovasz_matches_smp_and_mmseg_class_weights(seed):
    smp = smp_losses()
    logits, labels = random_batch(seed)
    up = upsampled(logits, labels)
    expected = smp.LovaszLoss("multiclass", ignore_index=255)(up, labels).item()
    assert abs(lovasz_softmax(logits, labels).item() - expected) < TOL
    # mmseg's class weights: loss_c * w_c, then the plain mean over the present classes. smp has no weights; its
    # loss restricted to one class is loss_c.
    from importlib import import_module

    lovasz = import_module(smp.__name__ + ".lovasz")
    weights = (0.5, 2.0, 7.0, 1.5, 1.0)
    present = labels[labels != 255].unique().tolist()
    per_class = [lovasz._lovasz_softmax(up.softmax(1), labels, classes=[c], ignore=255).item() for c in present]
    expected = sum(weights[c] * v for c, v in zip(present, per_class, strict=True)) / len(present)
    assert abs(lovasz_softmax(logits, labels, LossOptions(class_weights=weights)).item() - expected) < TOL


def test_weighted_sum_and_empty_batches():
    logits, labels = random_batch(6)
    options = LossOptions(class_weights=(1.0, 2.0, 1.0, 0.5, 1.0))
    combined = build_loss("ce:1.0,dice:0.5,focal:2,lovasz,ohem:0.25", options)(logits, labels)
    parts = [cross_entropy, dice_loss, focal_loss, lovasz_softmax, ohem_cross_entropy]
    expected = sum(w * f(logits, labels, options) for w, f in zip((1.0, 0.5, 2.0, 1.0, 0.25), parts, strict=True))
    assert abs(combined.item() - expected.item()) < TOL

    nothing = torch.full_like(labels, 255)  # a crop of pure "ignore": 0, never NaN, and backward works
    for name in LOSSES:
        x = logits.clone().requires_grad_()
        value = build_loss(name, options)(x, nothing)
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(x.grad).all(), name
    x = logits.clone().requires_grad_()
    segmentation_loss(x, nothing).backward()
    assert torch.isfinite(x.grad).all()


# -------------------------------------------------------------------------------------- specs and weights


def test_loss_spec_parsing_and_config_round_trip(tmp_path):
    assert parse_loss_spec("ce") == (("ce", 1.0),)
    assert parse_loss_spec(" ce:1.0, dice:0.5 ") == (("ce", 1.0), ("dice", 0.5))
    config = TrainConfig(loss="ohem , lovasz:0.5", class_weights="1, 2,0.5")
    assert config.loss == "ohem:1.0,lovasz:0.5" and config.class_weights == "1.0,2.0,0.5"
    config.save_yaml(tmp_path / "c.yaml")
    import yaml

    assert TrainConfig.from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text())) == config
    assert TrainConfig.from_dict({"class_weights": [1, 2.5]}).class_weights == "1.0,2.5"
    for bad, message in [
        ("dice,focl", "unknown loss 'focl'"),
        ("ce:abc", "'abc' of 'ce' is not a number"),
        ("ce:-1", "must be a positive number"),
        ("ce,,dice", "malformed"),
        ("", "malformed"),
        ("ce,ce:2", "appears twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_loss_spec(bad)


def test_class_weight_parsing_files_and_enet_formula(tmp_path):
    assert parse_class_weights("auto") == "auto"
    assert parse_class_weights("1,2.5,0") == (1.0, 2.5, 0.0)
    assert parse_class_weights("weights.txt") == Path("weights.txt")
    with pytest.raises(ValueError, match="negative"):
        parse_class_weights("1,-2,3")
    with pytest.raises(ValueError, match="every weight is 0"):
        parse_class_weights("0,0")
    with pytest.raises(ValueError, match="3 weights but the dataset has 4 classes"):
        check_class_weights([1, 2, 3], "x", num_classes=4)
    (tmp_path / "w.txt").write_text("# weights\n1.0 2.0\n0.5\n")
    (tmp_path / "w.json").write_text("[1, 2, 0.5]")
    for name in ("w.txt", "w.json"):
        assert resolve_class_weights(str(tmp_path / name), None, 3) == (1.0, 2.0, 0.5)
    with pytest.raises(ValueError, match="2 weights but the dataset has 3"):
        resolve_class_weights("1,2", None, 3)

    class Masks:  # 3 classes: 90 / 9 / 1 labelled pixels, plus ignored ones
        num_classes = 3

        def __len__(self):
            return 2

        def load(self, i):
            mask = np.array([0] * 45 + [1] * (9 if i else 0) + [2] * (0 if i else 1) + [255] * 7, np.uint8)
            return None, mask.reshape(1, -1), str(i)

    weights = resolve_class_weights("auto", Masks(), 3)
    expected = [1 / math.log(1.02 + share) for share in (0.9, 0.09, 0.01)]
    assert np.allclose(weights, expected, rtol=1e-12)
    Masks.num_classes = 4  # a class without pixels gets 0
    assert resolve_class_weights("auto", Masks(), 4) == pytest.approx((*expected, 0.0), rel=1e-12)


def test_cli_bad_loss_and_class_weights_fail_with_one_clear_line(tmp_path, capsys):
    from conftest import tiny_model_file
    from test_train import make_folder, tiny_args

    data = make_folder(tmp_path / "data", n_train=2, n_val=0)
    model = tiny_model_file(tmp_path / "tiny.json")

    def fails(*extra: str, expected: tuple[str, ...]) -> None:
        assert main(tiny_args(data, tmp_path / "run", model, "--iters", "1", *extra)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines and lines[-1].startswith("segformer train: error:"), lines
        for text in expected:
            assert text in lines[-1], lines[-1]

    fails("--loss", "ce,dicee", expected=("unknown loss 'dicee'", "ce, ohem, dice, focal, lovasz"))
    fails("--loss", "ce:1.0:2", expected=("'1.0:2' of 'ce' is not a number",))
    fails("--class-weights", "1,-2,1", expected=("weight -2.0 is negative",))
    fails("--class-weights", "1,2", expected=("2 weights but the dataset has 3 classes",))
    fails("--class-weights", str(tmp_path / "none.txt"), expected=("none.txt", "no such file"))
    assert not (tmp_path / "run").exists()


def test_training_with_a_weighted_sum_and_auto_class_weights_records_the_weights(tmp_path):
    import yaml

    from conftest import tiny_model_file
    from test_train import make_folder, tiny_args

    data = make_folder(tmp_path / "data", n_train=2, n_val=0)
    model = tiny_model_file(tmp_path / "tiny.json")
    args = tiny_args(data, tmp_path / "run", model, "--iters", "2", "--loss", "ce:1,dice:0.5,lovasz:0.5,ohem,focal")
    assert main([*args, "--class-weights", "auto"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["loss"] == "ce:1.0,dice:0.5,lovasz:0.5,ohem:1.0,focal:1.0"
    weights = [float(w) for w in saved["class_weights"].split(",")]
    assert len(weights) == 3 and all(1 / math.log(2.02) <= w <= 1 / math.log(1.02) for w in weights)
