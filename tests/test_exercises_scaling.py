import math

import pytest

from hp_mini.exercises import ExerciseError, check

GIB = 2**30
# Mistral-7B: 32 layers of 32 heads of width 128, 7.24e9 parameters (bfloat16 weights, float32 outputs).
PER_PROMPT = 4 * 32 * 32 * 128
WEIGHTS = 2 * 7.24e9


def test_l1_prompts_on_one_gpu_accepts_the_largest_count_that_fits():
    n = math.floor((80 * GIB - WEIGHTS) / PER_PROMPT)
    assert WEIGHTS + n * PER_PROMPT <= 80 * GIB < WEIGHTS + (n + 1) * PER_PROMPT
    assert check("scaling.l1_prompts_on_one_gpu", n, quiet=True)
    with pytest.raises(ExerciseError, match="do not fit"):
        check("scaling.l1_prompts_on_one_gpu", n + 1000, quiet=True)
    with pytest.raises(ExerciseError, match="more do"):
        check("scaling.l1_prompts_on_one_gpu", n // 2, quiet=True)


def test_l1_prompts_on_one_gpu_names_the_usual_slips():
    with pytest.raises(ExerciseError, match="weights share the GPU"):
        check("scaling.l1_prompts_on_one_gpu", 80 * GIB // PER_PROMPT, quiet=True)
    with pytest.raises(ExerciseError, match="2\\*\\*30"):
        check("scaling.l1_prompts_on_one_gpu", math.floor((80e9 - WEIGHTS) / PER_PROMPT), quiet=True)
    with pytest.raises(ExerciseError, match="float32"):
        check("scaling.l1_prompts_on_one_gpu", math.floor((80 * GIB - WEIGHTS) / (PER_PROMPT // 2)), quiet=True)


def test_l1_prompts_on_one_gpu_refuses_what_is_not_a_count():
    with pytest.raises(ExerciseError, match="integer"):
        check("scaling.l1_prompts_on_one_gpu", "136221", quiet=True)
    with pytest.raises(ExerciseError, match="whole number"):
        check("scaling.l1_prompts_on_one_gpu", 136221.5, quiet=True)
