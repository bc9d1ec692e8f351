"""Metrics against hand-computed confusion matrices, and `evaluate` (single process and two gloo ranks)."""

import json
import math
import os
import socket

import numpy as np
import pytest
import torch

from conftest import TINY
from segformer import create_model
from segformer.evaluation import evaluate, evaluate_confusion
from segformer.evaluation.metrics import ConfusionMatrix
from segformer.imageio import normalize


def test_hand_computed_with_ignore_pixel():
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])  # the last pixel predicts 2 but is ignored
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    r = cm.compute()
    assert r["aAcc"] == pytest.approx(3 / 5)
    assert [r["per_class"][c]["IoU"] for c in range(3)] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert [r["per_class"][c]["Acc"] for c in range(3)] == pytest.approx([1 / 2, 1.0, 0.0])
    assert [r["per_class"][c]["Dice"] for c in range(3)] == pytest.approx([2 / 4, 4 / 5, 0.0])
    assert r["mIoU"] == pytest.approx(1 / 3)
    assert r["mAcc"] == pytest.approx(1 / 2)
    assert r["mDice"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_absent_classes_are_nan_and_left_out_of_means():
    cm = ConfusionMatrix(4, class_names=("sky", "road", "car", "tree"))
    # class 2 is predicted but never labelled; class 3 appears nowhere
    cm.update(np.array([[0, 0, 2, 1]]), np.array([[0, 0, 1, 1]]))
    r = cm.compute()
    tree, car = r["per_class"]["tree"], r["per_class"]["car"]
    assert all(math.isnan(v) for v in tree.values())
    assert car["IoU"] == 0.0 and car["Dice"] == 0.0 and math.isnan(car["Acc"])  # Acc: mmseg divides by label area
    assert r["mIoU"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert r["mAcc"] == pytest.approx((1.0 + 0.5) / 2)
    assert r["mDice"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    json.dumps(r)  # NaN is allowed by json; the dict must hold plain floats and str/int keys


def test_perfect_and_empty_predictions():
    target = torch.randint(0, 5, (2, 8, 8))
    target[0, 0, :] = 255
    perfect = ConfusionMatrix(5)
    perfect.update(target.clamp(max=4), target)
    r = perfect.compute()
    assert r["aAcc"] == r["mIoU"] == r["mAcc"] == r["mDice"] == 1.0

    wrong = ConfusionMatrix(6)  # every pixel predicted as class 5, which is never labelled
    wrong.update(torch.full_like(target, 5), target)
    r = wrong.compute()
    assert r["aAcc"] == 0.0 and r["mIoU"] == 0.0 and r["mDice"] == 0.0 and r["mAcc"] == 0.0

    empty = ConfusionMatrix(3)  # nothing but ignore pixels: nothing to measure
    empty.update(torch.zeros(4, 4, dtype=torch.long), torch.full((4, 4), 255))
    r = empty.compute()
    assert int(empty.matrix.sum()) == 0
    assert math.isnan(r["aAcc"]) and math.isnan(r["mIoU"])


def test_updates_accumulate_like_one_big_update():
    g = torch.Generator().manual_seed(1)
    preds = torch.randint(0, 7, (3, 10, 12), generator=g)
    targets = torch.randint(0, 8, (3, 10, 12), generator=g)
    targets[targets == 7] = 255
    one, many = ConfusionMatrix(7), ConfusionMatrix(7)
    one.update(preds, targets)
    for p, t in zip(preds, targets, strict=True):
        many.update(p.numpy(), t.numpy().astype(np.uint8))
    assert torch.equal(one.matrix, many.matrix)
    assert int(one.matrix.sum()) == int((targets != 255).sum())


def test_bad_labels_and_shapes_are_refused():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="label value 7"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 7], [1, 255]]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    assert int(cm.matrix.sum()) == 0  # nothing half-counted


class TinySet:
    """Follows the SegmentationDataset interface: len, load(i), class_names, ignore_index, samples."""

    def __init__(self, n: int = 5, num_classes: int = 3, log_dir: str | None = None) -> None:
        rng = np.random.default_rng(0)
        self.class_names = tuple(f"c{i}" for i in range(num_classes))
        self.ignore_index = 255
        sizes = [(64, 96), (64, 96), (64, 96), (72, 64), (64, 96)][:n]
        self.items = []
        for h, w in sizes:
            mask = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
            mask[:4] = 255
            self.items.append((rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mask))
        self.samples = [(f"img{i}.jpg", f"mask{i}.png") for i in range(n)]
        self.log_dir = log_dir

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i):
        if self.log_dir:
            with open(os.path.join(self.log_dir, f"rank{os.environ.get('RANK', '0')}.txt"), "a") as f:
                f.write(f"{i}\n")
        image, mask = self.items[i]
        return image, mask, f"img{i}"


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return create_model("b0", num_classes=3, **TINY).eval()


def test_evaluate_matches_manual_loop_and_restores_train_mode(tiny_model):
    ds = TinySet()
    manual = ConfusionMatrix(3)
    with torch.no_grad():
        for i in range(len(ds)):
            image, mask, _ = ds.load(i)
            x = normalize(image)
            logits = torch.nn.functional.interpolate(tiny_model(x[None]), size=mask.shape, mode="bilinear")
            manual.update(logits.argmax(1)[0], torch.from_numpy(mask))
    tiny_model.train()
    r = evaluate(tiny_model, ds, progress=False, batch_size=3)  # batches the three equal-sized images
    assert tiny_model.training
    expected = manual.compute()
    assert r["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-6)
    assert r["aAcc"] == pytest.approx(expected["aAcc"], abs=1e-6)
    assert set(r["per_class"]) == {"c0", "c1", "c2"}
    few = evaluate_confusion(tiny_model.eval(), ds, progress=False, max_samples=2)
    assert int(few.matrix.sum()) == 2 * (60 * 96)


def test_evaluate_names_the_file_with_a_label_beyond_the_model(tiny_model):
    ds = TinySet()
    ds.items[1][1][10, 10] = 4
    with pytest.raises(ValueError, match=r"mask1\.png: label value 4 is outside the model's 3 classes"):
        evaluate(tiny_model, ds, progress=False)


def _ddp_worker(rank: int, port: int, log_dir: str) -> None:
    import torch.distributed as dist

    os.environ["RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("b0", num_classes=3, **TINY)
    r = evaluate(model, TinySet(log_dir=log_dir), progress=False)
    with open(os.path.join(log_dir, f"result{rank}.json"), "w") as f:
        json.dump(r, f)
    dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_eval_counts_each_sample_once(tmp_path, tiny_model):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    seen = [sorted(int(x) for x in (tmp_path / f"rank{r}.txt").read_text().split()) for r in range(2)]
    assert seen == [[0, 2, 4], [1, 3]]  # rank::world_size, no padding, no repeats
    results = [json.loads((tmp_path / f"result{r}.json").read_text()) for r in range(2)]
    single = evaluate(tiny_model, TinySet(), progress=False)
    for r in results:
        assert r["mIoU"] == pytest.approx(single["mIoU"], abs=1e-6)
        assert r["aAcc"] == pytest.approx(single["aAcc"], abs=1e-6)
