"""gpt2: heads sum to the residual write, scale_heads is the hand edit, the final norm folds exactly."""

from __future__ import annotations

import pytest

import helpers

ARCHS = ["gpt2"]


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return request.param, helpers.tiny_model(request.param)


def test_heads_sum_to_the_residual_write_at_every_position(arch_model):
    helpers.check_heads_sum_to_the_residual_write(arch_model[1], arch_model[0])


def test_pooled_heads_sum_to_the_pooled_residual_write(arch_model):
    helpers.check_pooled_heads_sum_to_the_pooled_write(arch_model[1], arch_model[0])


@pytest.mark.parametrize("alpha", [-1.0, 0.0, 5.0])
def test_scale_heads_equals_a_hand_edit_of_the_residual(arch_model, alpha):
    helpers.check_scale_heads_is_the_hand_edit(arch_model[1], arch_model[0], alpha)


def test_final_norm_folding_equals_the_model_norm(arch_model):
    helpers.check_final_norm_folding(arch_model[1], arch_model[0])
