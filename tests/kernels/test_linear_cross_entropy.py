"""Chunked linear + cross-entropy equals the plain computation in loss and gradients."""

import pytest
import torch
import torch.nn.functional as F

from leantune.kernels.linear_cross_entropy import linear_cross_entropy


@pytest.mark.parametrize("train_weight", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_loss_and_gradients_match_the_reference(train_weight, with_bias):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = torch.randn(101, 16, generator=g, requires_grad=train_weight)
    bias = torch.randn(101, generator=g, requires_grad=train_weight) if with_bias else None
    targets = torch.randint(0, 101, (37,), generator=g)

    ref = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum") * 0.5
    ref.backward()
    ref_grads = [t.grad.clone() for t in (hidden, weight, bias) if t is not None and t.requires_grad]
    for t in (hidden, weight, bias):
        if t is not None:
            t.grad = None

    got = linear_cross_entropy(hidden, weight, targets, bias, chunk_size=8) * 0.5
    got.backward()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    grads = [t.grad for t in (hidden, weight, bias) if t is not None and t.requires_grad]
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_no_grad_and_empty():
    hidden, weight = torch.randn(5, 4), torch.randn(7, 4)
    targets = torch.tensor([0, 1, 2, 3, 6])
    with torch.no_grad():
        got = linear_cross_entropy(hidden, weight, targets, chunk_size=2)
    torch.testing.assert_close(got, F.cross_entropy(hidden @ weight.T, targets, reduction="sum"))
    assert float(linear_cross_entropy(hidden[:0], weight, targets[:0])) == 0.0


@pytest.mark.parametrize("method", ["lora", "prompt", "full"])
def test_task_loss_with_the_fused_head_equals_full_logits(method, tmp_path):
    from tiny_models import save_tiny_llama

    import leantune as lt
    from leantune.config import validate_config
    from leantune.data.batching import pad_batch
    from leantune.models.loading import load_tokenizer
    from leantune.tasks import make_task
    from leantune.tasks.generative import Example

    folder = save_tiny_llama(tmp_path / "m", ["what colour is the sky blue red green"] * 5)
    cfg = validate_config({"model": folder, "task": "instruction", "data": {"train": "x.jsonl"}})
    task = make_task(cfg, load_tokenizer(folder), folder)
    model = task.build_model(folder)
    config = {"lora": lt.LoraConfig(r=4, init="random"), "prompt": lt.PromptTuningConfig(num_virtual_tokens=3),
              "full": lt.FullConfig()}[method]
    lt.attach(model, config)
    from collections import Counter

    feats = [task.encode(Example([{"role": "user", "content": q}], a), Counter())
             for q, a in [("what colour is the sky", "blue"), ("and grass", "green green")]]
    batch = pad_batch(feats, task.pad_id)
    fused, n = task.batch_loss(model, batch), task.batch_count(batch)
    fused.backward()
    fused_grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    logits, targets = task._outputs_and_targets(model, batch)
    plain = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                            reduction="sum")
    plain.backward()
    assert n == int((targets != -100).sum())
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    for k, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(fused_grads[k], p.grad, rtol=1e-4, atol=1e-6)
