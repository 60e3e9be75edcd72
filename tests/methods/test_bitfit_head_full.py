"""BitFit, head-only (linear probe) and full fine-tuning: which parameters each one trains."""

import pytest
import torch
from tiny_models import batch, bert, llama, llama_cls, output_of

import leantune as lt


def test_bitfit_trains_biases_and_head_only():
    model = lt.attach(bert(), lt.BitFitConfig())
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(n.endswith("bias") or "classifier.modules_to_save" in n for n in trained)
    assert any("classifier.modules_to_save.default.weight" == n for n in trained)


def test_bitfit_refuses_models_without_biases():
    with pytest.raises(lt.LeantuneError, match="has none"):
        lt.attach(llama(), lt.BitFitConfig())


def test_head_only_is_the_linear_probe():
    model = lt.attach(bert(), lt.HeadOnlyConfig())
    assert lt.trainable_parameters(model)[0] == 32 * 3 + 3
    model = lt.attach(llama_cls(), lt.HeadOnlyConfig())
    assert lt.trainable_parameters(model)[0] == 32 * 3  # Llama's score head has no bias
    with pytest.raises(lt.LeantuneError, match="task head"):
        lt.attach(llama(), lt.HeadOnlyConfig())


def test_head_only_training_leaves_the_encoder_untouched():
    model = lt.attach(bert(), lt.HeadOnlyConfig()).train()
    before = {n: p.clone() for n, p in model.bert.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**batch("bert")).loss.backward()
    opt.step()
    assert all(torch.equal(before[n], p) for n, p in model.bert.named_parameters())


def test_full_trains_everything_and_round_trips(tmp_path):
    model = lt.attach(llama(), lt.FullConfig())
    t, total = lt.trainable_parameters(model)
    assert t == total
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(1.0)
    inputs = batch("llama")
    lt.save_adapter(model, tmp_path)
    torch.testing.assert_close(output_of(lt.load_adapter(llama(), tmp_path), inputs), output_of(model, inputs))
