import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2 as tv

from ltray.data.stream.transforms import (
    AUGMENTS,
    boxes_from_draws,
    build_batch_transform,
    pad_crop_flip_batch,
    random_resized_crop_boxes,
    resize_center_crop,
)
from ltray.errors import LtrayError


def _images(n, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def _mixed_sizes():
    return [_images(1, h, w, seed=i)[0] for i, (h, w) in enumerate([(32, 32), (40, 57), (90, 60)])]


def _seeded(seed):
    return torch.Generator().manual_seed(seed)


def test_an_unknown_augment_is_refused_with_the_valid_names():
    with pytest.raises(LtrayError, match="unknown augment 'cifa'.*did you mean 'cifar'"):
        build_batch_transform("cifa", 32, True)
    with pytest.raises(LtrayError, match="valid: cifar, imagenet, none"):
        build_batch_transform("autoaugment", 32, True)


@pytest.mark.parametrize("augment", AUGMENTS.names())
def test_a_transform_survives_pickling_for_spawned_loader_workers(augment):
    t = build_batch_transform(augment, 16, True)
    images = _mixed_sizes()
    again = pickle.loads(pickle.dumps(t))
    assert torch.equal(again(images, _seeded(7)), t(images, _seeded(7)))


@pytest.mark.parametrize("augment", AUGMENTS.names())
@pytest.mark.parametrize("train", [True, False])
def test_every_batch_transform_gives_a_uint8_square_batch(augment, train):
    t = build_batch_transform(augment, 24, train)
    for images in (_images(5), _images(5, 40, 57), _mixed_sizes()):
        out = t(images, _seeded(1))
        assert out.dtype == torch.uint8 and out.shape == (len(images), 3, 24, 24)


@pytest.mark.parametrize("augment", AUGMENTS.names())
def test_same_seed_same_batch_other_seed_other_batch(augment):
    t = build_batch_transform(augment, 24, True)
    images = _mixed_sizes() * 3
    assert torch.equal(t(images, _seeded(7)), t(images, _seeded(7)))
    if augment != "none":  # ``none`` trains as it evaluates: nothing random
        assert not torch.equal(t(images, _seeded(7)), t(images, _seeded(8)))


def test_eval_returns_a_batch_already_at_size_as_it_is():
    images = _images(4)
    for augment in AUGMENTS.names():
        assert build_batch_transform(augment, 32, False)(images, _seeded(0)) is images


@pytest.mark.parametrize(("augment", "crop_fraction"), [("imagenet", 0.875), ("cifar", 1.0)])
def test_eval_resizes_and_centre_crops_each_image_as_torchvision(augment, crop_fraction):
    images = _mixed_sizes()
    out = build_batch_transform(augment, 24, False)(images, _seeded(0))
    reference = tv.Compose([tv.Resize(round(24 / crop_fraction)), tv.CenterCrop(24)])
    for image, got in zip(images, out, strict=True):
        assert torch.equal(got, reference(image))


def _pad_crop_flip_one(image, top, left, flip, pad=4):
    """The CIFAR augmentation of one image, spelled out."""
    size = image.shape[-1]
    window = F.pad(image, (pad, pad, pad, pad))[:, top : top + size, left : left + size]
    return window.flip(-1) if flip else window


def test_cifar_gather_equals_pad_crop_flip_image_by_image():
    params = [(t, x, f) for t in (0, 3, 8) for x in (0, 5, 8) for f in (False, True)]
    images = _images(len(params))
    top, left, flip = (torch.tensor(column) for column in zip(*params, strict=True))
    out = pad_crop_flip_batch(images, top, left, flip, pad=4)
    for image, (t, x, f), got in zip(images, params, out, strict=True):
        assert torch.equal(got, _pad_crop_flip_one(image, t, x, f))


def test_cifar_train_draws_offsets_then_flips_in_one_go_each():
    images = _images(16)
    out = build_batch_transform("cifar", 32, True)(images, _seeded(3))
    g = _seeded(3)
    offsets = torch.randint(0, 9, (2, 16), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    assert torch.equal(out, pad_crop_flip_batch(images, offsets[0], offsets[1], flip))
    assert 0 < int(flip.sum()) < 16  # both kinds are in the batch checked


def test_cifar_train_resizes_an_image_of_another_size_first():
    images = _mixed_sizes()
    out = build_batch_transform("cifar", 24, True)(images, _seeded(5))
    g = _seeded(5)
    offsets = torch.randint(0, 9, (2, 3), generator=g)
    flip = (torch.rand(3, generator=g) < 0.5).tolist()
    for i, image in enumerate(images):
        square = resize_center_crop(image, 24)
        want = _pad_crop_flip_one(square, *offsets[:, i].tolist(), flip[i])
        assert torch.equal(out[i], want)


def test_random_resized_crop_boxes_lie_inside_with_valid_areas_and_ratios():
    g = _seeded(0)
    n = 2000
    heights = torch.randint(200, 1200, (n,), generator=g)
    widths = torch.randint(200, 1200, (n,), generator=g)
    top, left, h, w = random_resized_crop_boxes(heights, widths, g).unbind(1)
    assert ((top >= 0) & (left >= 0) & (h > 0) & (w > 0)).all()
    assert ((top + h <= heights) & (left + w <= widths)).all()
    # sides of 50 px or more, each rounded by at most half a pixel: ratio and area off by <2%
    fraction = (h * w).double() / (heights * widths).double()
    ratio = w.double() / h.double()
    assert fraction.min() > 0.08 * 0.98 and fraction.max() <= 1.0
    assert ratio.min() > 0.75 * 0.98 and ratio.max() < 4 / 3 * 1.02
    assert fraction.min() < 0.1 and fraction.max() > 0.9  # the whole range is drawn
    assert (top > (heights - h) // 2).any() and (top < (heights - h) // 2).any()  # not centred


def test_the_first_try_that_fits_is_taken():
    # try 0: the whole area at ratio 4/3 needs w > width; try 1: a quarter at ratio 1 fits
    areas = torch.tensor([[1.0, 0.25] + [0.5] * 8], dtype=torch.float64)
    log_ratios = torch.tensor([[math.log(4 / 3)] + [0.0] * 9], dtype=torch.float64)
    box = boxes_from_draws(
        torch.tensor([100]),
        torch.tensor([100]),
        areas,
        log_ratios,
        torch.tensor([[0.0, 0.999]], dtype=torch.float64),
    )
    assert box.tolist() == [[0, 50, 50, 50]]


@pytest.mark.parametrize(("height", "width"), [(300, 100), (100, 300), (120, 140)])
def test_when_no_try_fits_the_centre_box_is_torchvisions(height, width):
    # areas over 1: a box of at least 1.5 times the image's area fits no try
    g = _seeded(0)
    got = random_resized_crop_boxes(
        torch.tensor([height]), torch.tensor([width]), g, scale=(1.5, 2.0)
    )
    image = torch.zeros(3, height, width)
    want = tv.RandomResizedCrop.get_params(image, scale=[1.5, 2.0], ratio=[3 / 4, 4 / 3])
    assert got.tolist() == [list(want)]


def test_imagenet_train_crops_resizes_and_flips_each_image_as_drawn():
    images = [_images(1, 64, 48, seed=i)[0] for i in range(8)]
    out = build_batch_transform("imagenet", 16, True)(images, _seeded(2))
    g = _seeded(2)
    boxes = random_resized_crop_boxes(torch.tensor([64] * 8), torch.tensor([48] * 8), g)
    flips = (torch.rand(8, generator=g) < 0.5).tolist()
    assert 0 < sum(flips) < 8
    for image, (top, left, h, w), flip, got in zip(images, boxes.tolist(), flips, out, strict=True):
        crop = image[None, :, top : top + h, left : left + w].float()
        want = torch.nn.functional.interpolate(crop, (16, 16), mode="bilinear", antialias=True)
        want = want[0].round().to(torch.uint8)
        assert torch.equal(got, want.flip(-1) if flip else want)


def test_imagenet_train_runs_two_operations_an_image_and_the_rest_once_a_batch():
    """On a GPU each operation is a kernel launch from the decode thread: the crop's cast
    and its resize an image, rounding, cast and flips once for the batch (views launch
    nothing and are not counted)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    views = {"slice", "select", "unsqueeze", "view", "expand", "alias", "lift_fresh", "detach"}

    class Operations(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ not in views:
                self.count += 1
            return func(*args, **(kwargs or {}))

    n = 64
    images = [_images(1, 40 + i % 7, 50, seed=i)[0] for i in range(n)]
    with Operations() as operations:
        build_batch_transform("imagenet", 16, True)(images, _seeded(4))
    assert operations.count <= 2 * n + 80, operations.count  # the boxes: about 60 a batch


def test_imagenet_train_keeps_a_flat_image_flat_at_the_ends_of_the_range():
    """Rounded and clamped: interpolation weights sum to 1, so a flat image stays flat."""
    t = build_batch_transform("imagenet", 16, True)
    for level in (0, 255):
        images = torch.full((4, 3, 50, 70), level, dtype=torch.uint8)
        assert (t(images, _seeded(0)) == level).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_cifar_on_the_gpu_equals_the_cpu_exactly():
    images = _images(64)
    t = build_batch_transform("cifar", 32, True)
    on_cpu = t(images, _seeded(11))
    on_gpu = t(images.cuda(), _seeded(11))
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), on_cpu)
