"""One evaluation pass: the loss a user reads is the cross-entropy of the predicted logits, and
each term of the training objective is reported on its own, never their weighted total."""

import torch
import torch.nn.functional as F

from ltray.config import LossConfig, ModelConfig, NormConfig, ScalingConfig
from ltray.losses import build_loss, head_for
from ltray.models import build_model
from ltray.train.device import Normalizer, Placement
from ltray.train.evaluate import evaluate


def test_eval_loss_is_the_ce_of_the_predicted_logits_and_terms_stay_apart():
    torch.manual_seed(0)
    counts = [30, 10, 3]
    loss = LossConfig(name="dr", norm=NormConfig(weight=1000.0, radius=50.0))
    criterion = build_loss(loss, counts)
    model = build_model(ModelConfig(arch="resnet32"), 3, head=head_for(loss, ModelConfig()))
    placement = Placement.create(torch.device("cpu"), ScalingConfig(), ModelConfig())
    normalize = Normalizer(placement, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    gen = torch.Generator().manual_seed(1)
    batches = [
        {"image": torch.randint(0, 256, (n, 3, 16, 16), generator=gen, dtype=torch.uint8),
         "label": torch.tensor([0, 1, 2, 0, 1][:n])}
        for n in (5, 3)
    ]  # fmt: skip
    counts_ = evaluate(model, criterion, batches, normalize, placement, 3)

    model.eval()
    with torch.no_grad():
        outs = [model(normalize(b["image"])) for b in batches]
        labels = torch.cat([b["label"] for b in batches])
        logits = torch.cat([criterion.predict_logits(o) for o in outs])
        terms = [
            criterion(o, b["label"], model.head).terms for o, b in zip(outs, batches, strict=True)
        ]
    expected = F.cross_entropy(logits.double(), labels, reduction="sum")
    # float32 logits of order 16 (the cosine scale), summed over 8 images: ~1e-5 relative
    torch.testing.assert_close(counts_.loss_sum, expected, rtol=1e-5, atol=1e-5)
    assert set(counts_.term_sums) == {"margin_ce", "uniformity", "norm"}
    norm = sum(t["norm"].double() * len(b["label"]) for t, b in zip(terms, batches, strict=True))
    torch.testing.assert_close(counts_.term_sums["norm"], norm, rtol=1e-5, atol=1e-5)
    # the weighted objective would be dominated by 1000 x the norm term; the loss is not
    assert counts_.loss_sum / 8 < 10 < 1000.0 * counts_.term_sums["norm"] / 8
