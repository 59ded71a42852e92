"""The traffic's class mix (`adapt --unlabelled`): EM recovers a known mix from a calibrated
model's answers, and the output bias moves by exactly log(estimate / learnt) -- or not at all
where the version is not a routed expert."""

import torch

from trainer.learning.traffic_mix import em_mix, output_bias, shift_to_traffic

LABELS = ["negative", "neutral", "positive"]


def calibrated_answers(mix: list[float], n: int, seed: int = 0) -> torch.Tensor:
    """p(y|x) under a uniform prior for texts drawn with `mix`: one feature per text, a unit
    Gaussian around its class's mean, so the exact posterior is known."""
    g = torch.Generator().manual_seed(seed)
    y = torch.multinomial(torch.tensor(mix), n, replacement=True, generator=g)
    means = torch.tensor([-2.0, 0.0, 2.0])
    x = means[y] + torch.randn(n, generator=g)
    return torch.softmax(-0.5 * (x[:, None] - means[None, :]) ** 2, dim=-1)


def test_em_recovers_a_skewed_mix_that_a_uniform_model_does_not_answer_with():
    truth = torch.tensor([0.6, 0.05, 0.35])
    probs = calibrated_answers(truth.tolist(), 6000)
    uniform = torch.full((3,), 1 / 3)
    naive = torch.bincount(probs.argmax(1), minlength=3) / len(probs)
    estimate = em_mix(probs, uniform)
    assert float((estimate - truth).abs().max()) < 0.03, estimate
    assert float((naive - truth).abs().max()) > 0.05  # what counting answers would have said
    assert abs(float(estimate.sum()) - 1) < 1e-6


def test_a_model_trained_with_another_mix_is_read_through_that_mix():
    # answers carrying a learnt mix [0.2, 0.6, 0.2] on traffic that is [0.5, 0.2, 0.3]
    learnt, truth = torch.tensor([0.2, 0.6, 0.2]), torch.tensor([0.5, 0.2, 0.3])
    probs = calibrated_answers(truth.tolist(), 6000, seed=1) * learnt
    probs = probs / probs.sum(1, keepdim=True)
    assert float((em_mix(probs, learnt) - truth).abs().max()) < 0.03


class Head(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 3))


def test_the_output_bias_moves_by_the_log_ratio_and_only_when_asked():
    model = Head()
    before = model.classifier[1].bias.detach().clone()
    logits = calibrated_answers([0.7, 0.1, 0.2], 3000, seed=2).log()
    learnt = {"negative": 1 / 3, "neutral": 1 / 3, "positive": 1 / 3}
    kept = shift_to_traffic(model, logits, LABELS, learnt, apply=False)
    assert not kept["applied"] and torch.equal(model.classifier[1].bias, before)
    moved = shift_to_traffic(model, logits, LABELS, learnt)
    assert moved["applied"] and output_bias(model) is model.classifier[1].bias
    q = torch.tensor([moved["estimated"][label] for label in LABELS])
    assert torch.allclose(model.classifier[1].bias - before, (q * 3).log(), atol=1e-3)
    assert moved["estimated"]["negative"] > 0.6 and moved["estimated"]["neutral"] < 0.15
    assert moved["estimated"] == kept["estimated"]  # the same estimate, applied or not


def test_an_emptied_class_keeps_a_finite_shift():
    probs = torch.tensor([[0.9, 0.0, 0.1]] * 50)  # no text looks neutral at all
    q = em_mix(probs, torch.full((3,), 1 / 3))
    assert 0 < float(q[1]) < 0.03 and torch.isfinite(q.log()).all()
