"""Meta-World task names, task sets, cameras and language instructions (no simulator import).

Task sets: `mt10` and `mt50` are the benchmark's own lists. For language and task generalization
the project declares two splits, used by the dataset builder and by evaluation alike:

- Tasks: `mt50_train` (45 tasks) and `mt50_heldout` (5 tasks), the held-out five being Meta-World's
  own ML45 test tasks (bin-picking, box-close, hand-insert, door-lock, door-unlock). Collect on
  `mt50_train`, evaluate on `mt50_heldout` to measure transfer to unseen tasks.
- Instructions: every task has four paraphrases. The first three are the training instructions
  (written into datasets, one drawn per episode); the fourth is held out and only ever shown to a
  policy at evaluation (`heldout_instructions()`, or `scripts/evaluate.py --instructions=FILE`).
"""

import zlib
from collections.abc import Iterable

import numpy as np

from octo_like.utils.errors import InputError

NUM_TRAIN_PARAPHRASES = 3
# Dataset proprio key (data_pipelines/metaworld) -> the MetaWorldEnv observation it was recorded from.
ENV_PROPRIO_KEYS = {"proprio": "proprio", "full_state": "state"}
CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")

# Four paraphrases per task: three for training, the last held out.
INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "assembly-v3": (
        "put the ring on the peg",
        "place the nut over the peg",
        "slide the ring onto the peg",
        "fit the ring around the peg",
    ),
    "basketball-v3": (
        "dunk the ball into the basket",
        "put the ball in the hoop",
        "score the ball in the basket",
        "drop the ball through the hoop",
    ),
    "bin-picking-v3": (
        "move the cube to the other bin",
        "pick the block from one bin and place it in the other",
        "transfer the cube between the bins",
        "carry the block over to the second bin",
    ),
    "box-close-v3": (
        "close the box with its lid",
        "put the lid on the box",
        "cover the box",
        "place the lid onto the box",
    ),
    "button-press-topdown-v3": (
        "press the button from the top",
        "push the button down",
        "press down on the button",
        "push the button from above",
    ),
    "button-press-topdown-wall-v3": (
        "press the button from the top behind the wall",
        "push the button down past the wall",
        "press down on the button near the wall",
        "reach over the wall and push the button down",
    ),
    "button-press-v3": (
        "press the button",
        "push the button in",
        "press the button forward",
        "push the button from the front",
    ),
    "button-press-wall-v3": (
        "press the button behind the wall",
        "push the button past the wall",
        "press the button next to the wall",
        "reach around the wall and push the button",
    ),
    "coffee-button-v3": (
        "press the button on the coffee machine",
        "push the coffee machine button",
        "start the coffee machine",
        "turn on the coffee maker",
    ),
    "coffee-pull-v3": (
        "pull the mug from the coffee machine",
        "take the cup out of the coffee machine",
        "slide the mug away from the coffee machine",
        "remove the mug from under the coffee maker",
    ),
    "coffee-push-v3": (
        "push the mug under the coffee machine",
        "slide the cup into the coffee machine",
        "put the mug below the coffee spout",
        "move the cup under the coffee maker",
    ),
    "dial-turn-v3": ("turn the dial", "rotate the dial", "spin the knob", "twist the dial around"),
    "disassemble-v3": (
        "take the ring off the peg",
        "remove the nut from the peg",
        "lift the ring off the peg",
        "pull the ring up and off the peg",
    ),
    "door-close-v3": ("close the door", "shut the door", "push the door closed", "swing the door shut"),
    "door-lock-v3": ("lock the door", "turn the lock on the door", "rotate the door lock down", "secure the door lock"),
    "door-open-v3": ("open the door", "pull the door open", "swing the door open", "open the door by its handle"),
    "door-unlock-v3": (
        "unlock the door",
        "turn the door lock open",
        "rotate the door lock up",
        "release the lock on the door",
    ),
    "drawer-close-v3": ("close the drawer", "push the drawer shut", "slide the drawer closed", "shut the drawer"),
    "drawer-open-v3": ("open the drawer", "pull the drawer open", "slide the drawer out", "pull out the drawer"),
    "faucet-close-v3": (
        "close the faucet",
        "turn the faucet off",
        "rotate the faucet handle closed",
        "shut off the tap",
    ),
    "faucet-open-v3": ("open the faucet", "turn the faucet on", "rotate the faucet handle open", "turn on the tap"),
    "hammer-v3": (
        "hammer the nail in",
        "drive the nail with the hammer",
        "hit the nail with the hammer",
        "pound the nail into the wall",
    ),
    "hand-insert-v3": (
        "put your hand into the hole",
        "insert the gripper into the hole",
        "reach into the hole",
        "move the hand into the opening",
    ),
    "handle-press-side-v3": (
        "press the handle down from the side",
        "push the side handle down",
        "press down the handle sideways",
        "push down on the handle from the side",
    ),
    "handle-press-v3": (
        "press the handle down",
        "push the handle down",
        "press down on the handle",
        "lower the handle",
    ),
    "handle-pull-side-v3": (
        "pull the handle up from the side",
        "lift the side handle",
        "pull up the handle sideways",
        "raise the handle from the side",
    ),
    "handle-pull-v3": ("pull the handle up", "lift the handle", "pull up on the handle", "raise the handle"),
    "lever-pull-v3": ("pull the lever up", "lift the lever", "raise the lever", "pull up on the lever"),
    "pick-out-of-hole-v3": (
        "pick the peg out of the hole",
        "lift the peg from the hole",
        "take the peg out of the hole",
        "pull the peg up out of the hole",
    ),
    "pick-place-v3": (
        "pick up the puck and place it at the goal",
        "move the puck to the target",
        "grab the puck and put it on the goal",
        "carry the puck to the goal position",
    ),
    "pick-place-wall-v3": (
        "pick up the puck and place it behind the wall",
        "move the puck over the wall to the goal",
        "carry the puck past the wall",
        "lift the puck over the wall onto the target",
    ),
    "plate-slide-back-side-v3": (
        "slide the plate back in from the side",
        "push the plate sideways into the cabinet",
        "slide the plate into the cabinet from the side",
        "return the plate to the cabinet sideways",
    ),
    "plate-slide-back-v3": (
        "slide the plate back into the cabinet",
        "push the plate back in",
        "slide the plate into the cabinet",
        "return the plate to the cabinet",
    ),
    "plate-slide-side-v3": (
        "slide the plate out to the side",
        "push the plate sideways out of the cabinet",
        "slide the plate sideways to the goal",
        "move the plate out of the cabinet to the side",
    ),
    "plate-slide-v3": (
        "slide the plate into the goal",
        "push the plate to the target",
        "slide the plate forward",
        "move the plate into the goal area",
    ),
    "peg-insert-side-v3": (
        "insert the peg into the hole from the side",
        "put the peg sideways into the hole",
        "push the peg into the side hole",
        "slide the peg into the hole",
    ),
    "peg-unplug-side-v3": (
        "unplug the peg from the side",
        "pull the peg out sideways",
        "remove the peg from the side hole",
        "slide the peg out of the hole",
    ),
    "push-back-v3": (
        "push the puck back",
        "slide the puck backwards to the goal",
        "push the puck away to the target",
        "move the puck back to the goal",
    ),
    "push-v3": (
        "push the puck to the goal",
        "slide the puck to the target",
        "push the puck forward to the goal",
        "move the puck by pushing it to the target",
    ),
    "push-wall-v3": (
        "push the puck past the wall",
        "slide the puck around the wall to the goal",
        "push the puck behind the wall",
        "move the puck around the wall to the target",
    ),
    "reach-v3": (
        "reach the goal",
        "move the gripper to the target",
        "reach toward the goal position",
        "put the hand at the target",
    ),
    "reach-wall-v3": (
        "reach the goal behind the wall",
        "move the gripper over the wall to the target",
        "reach past the wall",
        "put the hand at the target beyond the wall",
    ),
    "shelf-place-v3": (
        "place the block on the shelf",
        "put the cube onto the shelf",
        "lift the block onto the shelf",
        "set the block on the shelf",
    ),
    "soccer-v3": (
        "kick the ball into the goal",
        "push the ball into the net",
        "score a goal with the ball",
        "shoot the ball into the goal",
    ),
    "stick-pull-v3": (
        "pull the container with the stick",
        "use the stick to drag the container",
        "grab the stick and pull the container",
        "hook the container with the stick and pull it",
    ),
    "stick-push-v3": (
        "push the container with the stick",
        "use the stick to push the container",
        "grab the stick and push the container",
        "shove the container forward with the stick",
    ),
    "sweep-into-v3": (
        "sweep the puck into the hole",
        "push the puck into the hole",
        "slide the puck into the opening",
        "sweep the block into the hole",
    ),
    "sweep-v3": (
        "sweep the puck off the table",
        "push the puck off the edge",
        "sweep the block off the table",
        "slide the puck over the edge",
    ),
    "window-close-v3": ("close the window", "slide the window shut", "push the window closed", "shut the window"),
    "window-open-v3": (
        "open the window",
        "slide the window open",
        "push the window open",
        "slide the window to the side",
    ),
}

MT50_TASKS: tuple[str, ...] = tuple(sorted(INSTRUCTIONS))
MT10_TASKS: tuple[str, ...] = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)
MT50_HELDOUT_TASKS: tuple[str, ...] = (
    "bin-picking-v3",
    "box-close-v3",
    "hand-insert-v3",
    "door-lock-v3",
    "door-unlock-v3",
)
MT50_TRAIN_TASKS: tuple[str, ...] = tuple(task for task in MT50_TASKS if task not in MT50_HELDOUT_TASKS)

TASK_SETS: dict[str, tuple[str, ...]] = {
    "mt10": MT10_TASKS,
    "mt50": MT50_TASKS,
    "mt50_train": MT50_TRAIN_TASKS,
    "mt50_heldout": MT50_HELDOUT_TASKS,
}


def resolve_tasks(names: str | Iterable[str]) -> list[str]:
    """Task names from a comma-separated string or list of task names and task-set names.

    `"mt10"`, `"reach-v3,push-v3"`, `["mt50_heldout", "reach-v3"]`; the `-v3` suffix may be left
    out. Order is kept and duplicates dropped.
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    tasks = []
    for item in (item.strip() for item in items):
        if not item:
            continue
        if item in TASK_SETS:
            tasks.extend(TASK_SETS[item])
        elif item in INSTRUCTIONS or f"{item}-v3" in INSTRUCTIONS:
            tasks.append(item if item in INSTRUCTIONS else f"{item}-v3")
        else:
            raise InputError(
                f"unknown Meta-World task '{item}'; expected a task set ({', '.join(TASK_SETS)}) "
                f"or task names: {', '.join(MT50_TASKS)}"
            )
    if not tasks:
        raise InputError("no Meta-World tasks given; expected e.g. 'mt10' or 'reach-v3,push-v3'")
    return list(dict.fromkeys(tasks))


def train_instructions(task: str) -> tuple[str, ...]:
    """The paraphrases a dataset may contain for `task`."""
    return INSTRUCTIONS[task][:NUM_TRAIN_PARAPHRASES]


def heldout_instructions(tasks: Iterable[str] | None = None) -> dict[str, list[str]]:
    """{task: [held-out paraphrase]} for `tasks` (all by default), the `--instructions` file format."""
    return {task: list(INSTRUCTIONS[task][NUM_TRAIN_PARAPHRASES:]) for task in (tasks or MT50_TASKS)}


def episode_seed_sequence(purpose: str, seed: int, task: str, *indices: int) -> np.random.SeedSequence:
    """The seeds of one episode, the same in every process and run.

    `purpose` ("collect", "evaluate") keeps evaluation episodes from replaying the exact starts
    of the collected ones for the same `seed`. crc32 rather than hash(): Python salts str hashes
    per process.
    """
    return np.random.SeedSequence([zlib.crc32(purpose.encode()), seed, zlib.crc32(task.encode()), *indices])
