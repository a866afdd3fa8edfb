import pickle

import pytest
import torch
import torch.nn.functional as F

from ltray.data.stream.transforms import AUGMENTS, build_transform, random_resized_crop_box
from ltray.errors import LtrayError


def _img(h=32, w=32, seed=0):
    return torch.randint(
        0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize("augment", AUGMENTS.names())
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("h", "w"), [(32, 32), (40, 57), (300, 200)])
def test_every_transform_gives_uint8_square(augment, train, h, w):
    out = build_transform(augment, 24, train)(_img(h, w), torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == (3, 24, 24)


@pytest.mark.parametrize("augment", AUGMENTS.names())
def test_same_generator_seed_same_output_and_picklable(augment):
    t = pickle.loads(pickle.dumps(build_transform(augment, 16, True)))
    img = _img(40, 40)
    a = t(img, torch.Generator().manual_seed(7))
    b = t(img, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_eval_is_identity_at_size():
    img = _img()
    for augment in AUGMENTS.names():
        assert torch.equal(build_transform(augment, 32, False)(img, torch.Generator()), img)


def test_cifar_train_is_a_window_of_the_padded_image_maybe_flipped():
    img = _img()
    padded = F.pad(img, (4, 4, 4, 4))
    g = torch.Generator().manual_seed(3)
    seen_flip = seen_plain = False
    for _ in range(20):
        out = build_transform("cifar", 32, True)(img, g)
        windows = [padded[:, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
        plain = any(torch.equal(out, w) for w in windows)
        flipped = any(torch.equal(out.flip(-1), w) for w in windows)
        assert plain or flipped
        seen_plain |= plain
        seen_flip |= flipped and not plain
    assert seen_plain and seen_flip


def test_random_resized_crop_box_stays_inside():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(50, 80, g)
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 80 and h > 0 and w > 0


def test_unknown_augment_lists_valid_ones():
    with pytest.raises(LtrayError, match="valid: cifar, imagenet, none"):
        build_transform("autoaugment", 32, True)
