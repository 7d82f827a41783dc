"""Rebuild the prompts the reference BiLLP code would send, so their size can be measured.

The reference (jizhi-zhang/BiLLP, `Agents/agent_a2c.py` on top of `agent_base.py`,
`agent_reflexion.py`, `prompts.py`, `fewshots.py`) runs one ReAct prompt per user:
instructions + few-shot episodes + retrieved reflections + the task question + the *whole*
scratchpad of the episode (`Thought n`, `Action n`, `Observation n` lines), re-sent at every call.
Per step it makes three calls: a Thought call and an Action call on that same prompt (planner and
actor are one prompt, BILLP.md §8) and a critic call with its own few-shot prompt over the last
10 titles; after the episode one reflection call re-sends the untruncated scratchpad. Before
each ReAct call the scratchpad is cut to 4,000 tokens by replacing the longest `Thought` lines
with `[truncated thought]`; nothing else is ever cut.

Every text below is our own wording: the reference's strings are not copied. They keep its
layout and its size: each block was written to the token count of the reference block it
stands for, measured with SmolLM2's tokenizer (`REFERENCE_TOKENS`; tests check the match).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

Counter = Callable[[str], int]

TRUNCATE_TOKENS = 4000  # the reference's `truncate_scratchpad(n_tokens=4000)`
CRITIC_TITLES = 10  # the critic sees (history + recommended)[-10:]
HINT_TITLES = 10  # memory queries use the last 10 titles (`format_query`)

# Tokens of the reference's own blocks under SmolLM2-135M's tokenizer, measured on its text
# (placeholders left empty). Our blocks below are written to these sizes.
REFERENCE_TOKENS = {
    "fewshot_two_episodes": 917,  # steam and movie: a 5-step and a 4-step example episode
    "fewshot_one_episode": 584,  # amazon: the 5-step example episode alone
    "fewshot_reflection": 474,  # reflector: one failed trial and its reflection
    "react_instruction": 135,
    "reflect_instruction": 101,
    "critic_instruction": 323,  # includes its three example lists
    "reflection_header": 37,
}
FEWSHOT_OF_DATASET = {"steam": "two", "movie": "two", "amazon": "one", "synthetic": "two"}
"""Which few-shot set the reference uses per dataset (synthetic stands in for Steam)."""

# ---------------------------------------------------------------- our size-matched blocks

_EPISODE_LONG = (
    "Question: The user's viewing history is ['Harbor Lights', \"The Lighthouse Keeper's "
    "Daughter\", 'Northern Line', 'Iron Orchard', 'Paper Moons', 'The Last Ferry', 'Glass "
    "Mountain', 'Quiet Hours', 'Red Meridian', 'The Salt Road', 'Winter Garden', 'Copper Sky', "
    "'The Clockmaker', 'Silent Valley', 'Broken Compass', 'A Map of Small Things', 'Tin Soldiers', "
    "'The Long Weekend', 'Rivers of Sand: A Desert Journey in Three Parts', 'Midnight Express "
    "Delivery', 'The Orchard'], please recommend item for this user\n\n"
    "Thought: This user mixes family drama, crime and light comedy, and also returns to older "
    "war stories and thrillers. I will start with the drama they like best and later move to the "
    "smaller genres they have shown some interest in, such as the war stories and the "
    "thrillers.\n\n"
    "Action: recommend[The Tailor of Brightwater]\n\n"
    "Observation: Episode continue, reward=0.88412093561248817\n\n"
    "Thought:The user liked this drama with a crime thread. The plan says comedy comes next, so "
    "I will pick a title that blends light comedy with a serious family story, close to what "
    "they rated well.\n\n"
    "Action: recommend[A Wedding in October]\n\n"
    "Observation: Episode continue, reward=0.79315542810936214\n\n"
    "Thought: The user is still happy with what we show. Following the plan, after the favourite "
    "genres we should try one of the smaller ones they like, for instance a war story or a tense "
    "thriller.\n\n"
    "Action: recommend[Robot Rangers: The Animated Adventure]\n\n"
    "Observation: Episode continue, reward=0.24718830947511203\n\n"
    "Thought: That one missed badly. It was probably made for young children, which this user "
    "does not "
    "watch. To keep the user for a long session we should go back to the dramas they enjoy "
    "most, since those were rated the highest of all.\n\n"
    "Action: recommend[Stone and Thunder]\n\n"
    "Observation: Episode continue, reward=0.95132087764120951\n\n"
    "Thought: The user liked this one as well. From here the plan should weigh this user's own "
    "tastes "
    "and keep offering a varied set of titles spread over several genres.\n\n"
    "Action: recommend[The Iron Knight Returns]\n\n"
    "Observation: Episode finished, User Stop, reward=-1000.00000\n\n"
)
_EPISODE_SHORT = (
    "Question: The user's viewing history is ['Pixel Harbor', 'Sky Forge: Complete Edition', "
    "'Tunnel Racer 2', 'Moonwell', \"Captain Juniper's Voyage - Extended Cut\"], please "
    "recommend item for this user\n"
    "Thought: This player enjoys fast action games and small independent titles, with some "
    "interest in adventure games too. I will begin with the action games they like best and then "
    "try other genres they have touched before, one at a time.\n\n"
    "Action: recommend[Hidden Lanterns]\n\n"
    "Observation: Episode continue, reward=4\n\n"
    "Thought: The player liked this action and indie game a lot. The plan says adventure comes "
    "next, "
    "so I will suggest an adventure game with a calm pace and a strong story.\n\n"
    "Action: recommend[The Quiet Trail]\n\n"
    "Observation: Episode continue, reward=5\n\n"
    "Thought: The player is pleased with every game so far. Following the plan, now that the "
    "favourite genres "
    "are covered we can offer a smaller genre they may like, for example a role-playing game.\n\n"
    "Action: recommend[Arena of Bronze]\n\n"
    "Observation: Episode continue, reward=4\n\n"
    "Thought: This was liked too, which confirms the plan. Next, the plan should keep this "
    "player's tastes in view while "
    "offering games from a wider range of genres so the session stays fresh.\n\n"
    "Action: recommend[Forty Days of Flight]\n\n"
    "Observation: Episode finished, User Stop, reward=-1000.00000\n\n"
)
FEWSHOTS = {"two": "\n" + _EPISODE_LONG + "\n\n" + _EPISODE_SHORT, "one": "\n" + _EPISODE_LONG}

FEWSHOT_REFLECTION = (
    "\nPrevious Trial:\n"
    "Question: The user's viewing history is ['Iron Orchard', 'Paper Moons', 'The Last Ferry', "
    "'Glass Mountain', 'Quiet Hours', 'Red Meridian', 'The Salt Road', 'Winter Garden', "
    "'Copper Sky', 'The Clockmaker', 'Silent Valley', 'Broken Compass', 'A Map of Small Things: "
    "Collected Stories of the Coast', 'Tin Soldiers', 'The Orchard'], please recommend item for "
    "this user\n"
    "Thought 1: This user likes several genres, among them action, comedy and drama, and seems "
    "fond of older classics. A title that fits all of these at once is a good way to start the "
    "session.\n"
    "Action 1: recommend[The Tailor of Brightwater]\n"
    "Observation 1: Episode continue, reward=0.9412087734651565\n"
    "Thought 2: The last title worked. The user enjoys strong stories with memorable characters, "
    "so another film of the same kind should work just as well for this user.\n"
    "Action 2: recommend[Stone and Thunder]\n"
    "Observation 2: Episode continue, reward=0.9683315072417259\n"
    "Thought 3: By now the user clearly and consistently prefers classics with a strong story. "
    "I will pick one more title "
    "that meets both of these conditions for the user.\n"
    "Action 3: recommend[The Long Weekend]\n"
    "Observation 3: Episode continue, reward=0.9855120391845703\n"
    "Thought 4: Every recommendation so far was accepted with a high reward, so I will keep "
    "choosing films that "
    "match what the user already likes.\n"
    "Action 4: recommend[The Iron Knight Returns]\n"
    "Observation 4: Episode finished, User Stop, reward=0.6041189432144165\n\n"
    "Reflection: The user grew tired of seeing one kind of film and left after the last one. Next "
    "time, check whether the user is getting bored of a genre before recommending the same "
    "kind of item to them again\n"
)

REACT_INSTRUCTION = (
    "Carry out a recommendation task by alternating Thought, Action and Observation steps. A "
    "Thought reasons about the session so far and about what the user wants right now, and \n"
    "an Action can be of this type only: \n"
    "(1) recommend[item], which shows the user one item picked from their interests. Try to "
    "match the user's taste as closely as you can and to keep recommending for as many rounds "
    "as you can. A user who is unhappy with a recommendation leaves and accepts no more.\n\n"
    "Take as many steps as you need to do this.\n"
    "Examples follow:\n{examples}\n\n{trajs}\n(END OF EXAMPLES)\n\n{reflections}\n\n"
    "Question: {question}{scratchpad}"
)
REFLECTION_HEADER = (
    "You have recommended items to users before. The reflections below hold lessons on how to "
    "work with users and keep them engaged. Use them to improve the way you recommend.\n"
)
REFLECT_INSTRUCTION = (
    "You are an advanced reasoning agent that learns from reflecting on itself. Below is an "
    "earlier trial "
    "of yours in which you had to recommend items to a user. It failed because the user was "
    "not satisfied and "
    "did not stay for many rounds. In a few short sentences, find the most likely cause of the "
    "failure and "
    "write a new, short, high-level plan that avoids the same failure next time.  \n"
    "Examples follow:\n{examples}\n\nPrevious trial:\nQuestion: {question}{scratchpad}\n\n"
    "Reflection:"
)
_CRITIC_BASE = (
    "'Pixel Harbor', 'Sky Forge: Complete Edition', 'Tunnel Racer 2: Night Circuit', 'Moonwell', "
)
CRITIC_INSTRUCTION = (
    "\nYou are an expert on recommender systems. Decide whether the list of recommended items "
    "shown below will keep the user satisfied.\nYour answer must be one integer in the range "
    "-5 to 5. (A higher score "
    "means a better sequence: closer to what the user likes, more satisfying and less tiring "
    "for the user.)\n\n"
    "Examples follow:\n"
    f"Actor: The user's viewing history is [{_CRITIC_BASE}\"Captain Juniper's Voyage - Extended "
    'Cut"]\n\nCritic: 5\n\n\n'
    f"Actor: The user's viewing history is [{_CRITIC_BASE}\"Captain Juniper's Voyage - Extended "
    "Cut\", 'Hidden Lanterns', 'The Quiet Trail', 'Dead Letters of Winter Harbor']\n\nCritic: "
    "3\n\n\n"
    f"Actor: The user's viewing history is [{_CRITIC_BASE}\"Captain Juniper's Voyage - Extended "
    "Cut\", 'Hidden Lanterns', 'The Quiet Trail', 'Dead Letters of Winter', 'The Novice's "
    "Handbook']\n\n"
    "Critic: -5\n\n<End Example>\n\n"
    "Actor: The user's viewing history is {history_list}\n\nInstruction: {instruction}\n\n"
    "Critic: \n"
)
EXPLORE_HINT = "(Please recommend {a} and {b} items so the user can explore new interests)"
ACTOR_HINT = (
    "From past experience, when {query}, we suggest recommending {good} items and avoiding "
    "{bad} items."
)
CRITIC_HINT = "From past experience, when {query}, the value is {value}"
MEMORY_QUERY = "The user viewing history is [{titles}]"
REPLACED_OBSERVATION = (
    "\nObservation {n}: [{wrote}] cannot be recommended; recommend[{title}] instead"
)


# ---------------------------------------------------------------- one step of an episode


@dataclass(frozen=True)
class RefStep:
    """What one step of an episode put into the reference's scratchpad and hints."""

    thought: str
    action: str  # the title the actor wrote
    title: str  # the catalogue title it was grounded to
    rating: float
    left: bool  # the user quit at this step
    explore: tuple[str, str] = ("", "")  # two genres suggested for exploration
    good: tuple[str, ...] = ()  # actor-memory hint: titles marked +
    bad: tuple[str, ...] = ()  # ... and marked -
    hinted: bool = False  # whether the actor memory returned a hint at all
    critic_hint: float | None = None


def question(history: Sequence[str]) -> str:
    """Return the task question: the shown history as a Python list literal, as the reference."""
    return f"The user's viewing history is {list(history)!r}, please recommend item for this user."


def reflections_block(reflections: Sequence[str]) -> str:
    """Return the retrieved reflections with their header, or nothing when there are none."""
    if not reflections:
        return ""
    return REFLECTION_HEADER + "Reflections:\n- " + "\n- ".join(r.strip() for r in reflections)


def _memory_query(titles: Sequence[str]) -> str:
    return MEMORY_QUERY.format(titles=",".join(titles[-HINT_TITLES:]))


def step_lines(n: int, step: RefStep) -> str:
    """Return what step `n` leaves in the scratchpad once it is over (hints already removed)."""
    text = f"\nThought {n}: {step.thought}\nAction {n}: recommend[{step.action}]"
    if step.action != step.title:
        text += REPLACED_OBSERVATION.format(n=n, wrote=step.action, title=step.title)
    outcome = (
        "Episode finished, User Stop, reward=-1000.000"
        if step.left
        else (f"Episode continue, reward={step.rating:g}")
    )
    return text + f"\nObservation {n}: {outcome}"


def truncate(scratchpad: str, count: Counter, limit: int = TRUNCATE_TOKENS) -> str:
    """Cut the longest `Thought` lines to `Thought n: [truncated thought]` until under `limit`.

    The reference re-tokenizes the whole scratchpad after each cut; line deltas give the same
    stopping point far faster. When every thought is already cut the reference raises
    (pop from an empty list); we stop and send the scratchpad as it is.
    """
    total = count(scratchpad)
    if total <= limit:
        return scratchpad
    lines = scratchpad.split("\n")
    thoughts = sorted(
        (i for i, line in enumerate(lines) if line.startswith("Thought")),
        key=lambda i: count(lines[i]),
    )
    while total > limit and thoughts:
        i = thoughts.pop()
        cut = lines[i].split(":")[0] + ": [truncated thought]"
        total += count(cut) - count(lines[i])
        lines[i] = cut
    return "\n".join(lines)


def react_prompt(
    history: Sequence[str],
    reflections: Sequence[str],
    scratchpad: str,
    dataset: str,
    count: Counter,
) -> str:
    """Return one ReAct call's prompt: instructions, few-shots, reflections, question, "
    "scratchpad."""
    return REACT_INSTRUCTION.format(
        examples=FEWSHOTS[FEWSHOT_OF_DATASET.get(dataset, "two")],
        trajs="",
        reflections=reflections_block(reflections),
        question=question(history),
        scratchpad=truncate(scratchpad, count),
    )


def critic_prompt(history: Sequence[str], recommended: Sequence[str], hint: float | None) -> str:
    """Return the critic's prompt over the last 10 titles of history + this episode's items."""
    titles = [*history, *recommended][-CRITIC_TITLES:]
    instruction = (
        "" if hint is None else CRITIC_HINT.format(query=_memory_query(titles), value=f"{hint:g}")
    )
    return CRITIC_INSTRUCTION.format(history_list=repr(titles), instruction=instruction)


def reflection_prompt(history: Sequence[str], steps: Sequence[RefStep]) -> str:
    """Return the reflector's prompt: its few-shot and the whole, untruncated scratchpad."""
    scratchpad = "".join(step_lines(n, s) for n, s in enumerate(steps, start=1))
    return REFLECT_INSTRUCTION.format(
        examples=FEWSHOT_REFLECTION, question=question(history), scratchpad=scratchpad
    )


def step_prompts(
    history: Sequence[str],
    reflections: Sequence[str],
    steps: Sequence[RefStep],
    index: int,
    dataset: str,
    count: Counter,
) -> list[tuple[str, str]]:
    """Return the (role, prompt) calls the reference makes at step `index` (0-based).

    Thought and Action share the ReAct prompt; the Action call's scratchpad also carries the
    Thought with the exploration and actor-memory hints, which are removed afterwards.
    """
    n, step = index + 1, steps[index]
    before = "".join(step_lines(k, s) for k, s in enumerate(steps[:index], start=1))
    thought_pad = before + f"\nThought {n}:"
    hints = EXPLORE_HINT.format(a=step.explore[0], b=step.explore[1])
    if step.hinted:
        shown = [*history, *(s.title for s in steps[:index])]
        hints += ACTOR_HINT.format(
            query=_memory_query(shown), good=",".join(step.good), bad=",".join(step.bad)
        )
    action_pad = thought_pad + f" {step.thought}{hints}\nAction {n}:"
    recommended = [s.title for s in steps[: index + 1]]
    return [
        ("thought", react_prompt(history, reflections, thought_pad, dataset, count)),
        ("action", react_prompt(history, reflections, action_pad, dataset, count)),
        ("critic", critic_prompt(history, recommended, step.critic_hint)),
    ]


def episode_prompts(
    history: Sequence[str],
    reflections: Sequence[str],
    steps: Sequence[RefStep],
    dataset: str,
    count: Counter,
) -> tuple[list[list[tuple[str, str]]], str]:
    """Return every step's calls and the closing reflection prompt of one episode."""
    per_step = [
        step_prompts(history, reflections, steps, i, dataset, count) for i in range(len(steps))
    ]
    return per_step, reflection_prompt(history, steps)
