"""The Meta-World task registry, its declared splits, and the seeds of episodes."""

import pytest

from octo_like.eval.envs import metaworld_tasks as mt
from octo_like.utils.errors import InputError


def test_task_sets_match_the_benchmark():
    from metaworld import env_dict

    assert set(mt.MT50_TASKS) == set(env_dict.MT50_V3)
    assert list(mt.MT10_TASKS) == list(env_dict.MT10_V3)
    assert set(mt.MT50_HELDOUT_TASKS) == set(env_dict.ML45_V3["test"])
    assert set(mt.MT50_TRAIN_TASKS) | set(mt.MT50_HELDOUT_TASKS) == set(mt.MT50_TASKS)
    assert not set(mt.MT50_TRAIN_TASKS) & set(mt.MT50_HELDOUT_TASKS)


def test_every_task_has_distinct_paraphrases_split_three_to_one():
    for task, paraphrases in mt.INSTRUCTIONS.items():
        assert len(paraphrases) == 4 and len(set(paraphrases)) == 4, task
        assert mt.train_instructions(task) == paraphrases[:3]
        assert mt.heldout_instructions([task]) == {task: [paraphrases[3]]}
    assert set(mt.heldout_instructions()) == set(mt.MT50_TASKS)


def test_resolve_tasks_accepts_sets_names_and_short_names_in_order():
    assert mt.resolve_tasks("mt10") == list(mt.MT10_TASKS)
    assert mt.resolve_tasks("drawer-open, reach-v3,drawer-open-v3") == ["drawer-open-v3", "reach-v3"]
    assert mt.resolve_tasks(["mt50_heldout"]) == list(mt.MT50_HELDOUT_TASKS)


@pytest.mark.parametrize(
    "names, message",
    [
        (
            "reach,open-the-fridge",
            r"unknown Meta-World task 'open-the-fridge'; expected a task set \(mt10, .*\) or task names: assembly-v3, ",
        ),
        (" , ", "no Meta-World tasks given"),
    ],
)
def test_bad_task_names_fail_with_the_valid_names(names, message):
    with pytest.raises(InputError, match=message):
        mt.resolve_tasks(names)


def test_episode_seeds_depend_on_purpose_seed_task_and_index_only():
    def state(*args):
        return mt.episode_seed_sequence(*args).generate_state(2).tolist()

    assert state("collect", 0, "reach-v3", 1, 0) == state("collect", 0, "reach-v3", 1, 0)
    variants = [
        ("evaluate", 0, "reach-v3", 1, 0),
        ("collect", 1, "reach-v3", 1, 0),
        ("collect", 0, "push-v3", 1, 0),
        ("collect", 0, "reach-v3", 2, 0),
        ("collect", 0, "reach-v3", 1, 1),
    ]
    seeds = {tuple(state(*args)) for args in [("collect", 0, "reach-v3", 1, 0), *variants]}
    assert len(seeds) == 6
