"""Long-context task generators (RULER-style): passkey, needle-in-a-haystack (single, multi-key, multi-value),
variable tracking and common-words extraction. Each sample is prompt token ids + expected answers + a scorer.

Prompts are assembled from token pieces (instruction, haystack units, needles, question), so their length is
measured with the model's own tokenizer and fixed without re-tokenising a 1M-token string per sample: the prompt
plus the answer's token budget fits in the grid length, as RULER counts it. Every random choice comes from a
`random.Random` seeded by (seed, task, length, depth, index): the same grid gives the same prompts everywhere.
"""

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from m3.eval.fidelity import stdlib_text
from m3.eval.longctx.words import ADJECTIVES, NOUNS, pseudo_words

FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
HAYSTACKS = ("noise", "code")  # noise: FILLER repeated (the classic passkey text); code: Python stdlib sources
FORMS = ("completion", "chat")


@dataclass
class Sample:
    task: str
    length: int  # grid length: prompt + max_tokens fit in it
    depth: float | None  # where the (first) needle sits, 0..1 of the haystack; None: the task has no depth
    index: int
    prompt_ids: list[int]
    answers: list[str]
    max_tokens: int  # answer budget (greedy decoding)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids)

    def score(self, output: str) -> float:
        return TASKS[self.task].score(output, self.answers)


@dataclass
class Spec:
    """What a task generator decides: the words around the context and either needles (placed in a haystack)
    or a context builder (given a token budget, returns the context's token ids)."""

    instruction: str
    question: str
    answer_prefix: str  # the start of the answer; completion ends the prompt with it, chat opens the reply with it
    answers: list[str]
    needles: list[tuple[float, str]] = field(default_factory=list)  # (depth 0..1, sentence), in reading order
    context: Callable[[int], list[int]] | None = None
    haystack: str | None = None  # forces a haystack kind (passkey always uses the classic noise)


@dataclass
class Task:
    name: str
    generate: Callable  # (rng, depth, tokenizer) -> Spec
    score: Callable[[str, list[str]], float]  # (model output, answers) -> 0..1
    max_tokens: int
    has_depth: bool


TASKS: dict[str, Task] = {}


def task(name: str, score, max_tokens: int, has_depth: bool = True):
    def register(fn):
        TASKS[name] = Task(name, fn, score, max_tokens, has_depth)
        return fn

    return register


# -- scorers --
def first_number_matches(output: str, answers: list[str]) -> float:
    """1 if the first number in the output is the answer (so listing every number seen does not pass)."""
    numbers = re.findall(r"\d+", output)
    return float(bool(numbers) and numbers[0] == answers[0])


def recall_all(output: str, answers: list[str]) -> float:
    """Share of the answers found in the output as whole words (case-insensitive)."""
    found = sum(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", output, re.IGNORECASE) is not None for a in answers)
    return found / len(answers)


# -- the tasks --
_NEEDLE_INSTRUCTION = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the numbers afterwards."
)


def _key(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _magic(key: str, value: str) -> str:
    return f"One of the special magic numbers for {key} is: {value}."


@task("passkey", first_number_matches, max_tokens=8)
def passkey(rng: random.Random, depth: float, tokenizer) -> Spec:
    key = _number(rng, 5)
    return Spec(
        instruction="There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
        "I will quiz you about the important information there.",
        question="What is the pass key?",
        answer_prefix="The pass key is",
        answers=[key],
        needles=[(depth, f"The pass key is {key}. Remember it. {key} is the pass key.")],
        haystack="noise",
    )


@task("needle_single", first_number_matches, max_tokens=12)
def needle_single(rng: random.Random, depth: float, tokenizer) -> Spec:
    key, value = _key(rng), _number(rng, 7)
    return Spec(
        instruction=_NEEDLE_INSTRUCTION,
        question=f"What is the special magic number for {key} mentioned in the provided text?",
        answer_prefix=f"The special magic number for {key} mentioned in the provided text is",
        answers=[value],
        needles=[(depth, _magic(key, value))],
    )


@task("needle_multikey", first_number_matches, max_tokens=12)
def needle_multikey(rng: random.Random, depth: float, tokenizer, num_keys: int = 4) -> Spec:
    keys = []
    while len(keys) < num_keys:
        k = _key(rng)
        if k not in keys:
            keys.append(k)
    values = [_number(rng, 7) for _ in keys]
    needles = [(depth, _magic(keys[0], values[0]))] + [(rng.random(), _magic(k, v)) for k, v in zip(keys, values)][1:]
    return Spec(
        instruction=_NEEDLE_INSTRUCTION,
        question=f"What is the special magic number for {keys[0]} mentioned in the provided text?",
        answer_prefix=f"The special magic number for {keys[0]} mentioned in the provided text is",
        answers=[values[0]],
        needles=sorted(needles, key=lambda n: n[0]),
    )


@task("needle_multivalue", recall_all, max_tokens=48)
def needle_multivalue(rng: random.Random, depth: float, tokenizer, num_values: int = 4) -> Spec:
    key = _key(rng)
    values = list(dict.fromkeys(_number(rng, 7) for _ in range(num_values * 2)))[:num_values]
    needles = [(depth, _magic(key, values[0]))] + [(rng.random(), _magic(key, v)) for v in values[1:]]
    return Spec(
        instruction=_NEEDLE_INSTRUCTION,
        question=f"What are all the special magic numbers for {key} mentioned in the provided text?",
        answer_prefix=f"The special magic numbers for {key} mentioned in the provided text are",
        answers=values,
        needles=sorted(needles, key=lambda n: n[0]),
    )


@task("variable_tracking", recall_all, max_tokens=32)
def variable_tracking(rng: random.Random, depth: float, tokenizer, num_hops: int = 4) -> Spec:
    """One chain VAR A = 12345, VAR B = VAR A, ...: it starts at `depth`, the later links lie after it."""
    names: list[str] = []
    while len(names) < num_hops + 1:
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if name not in names:
            names.append(name)
    value = _number(rng, 5)
    links = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    depths = [depth] + sorted(rng.uniform(depth, 1.0) for _ in links[1:])
    return Spec(
        instruction="Memorize and track the chain(s) of variable assignment hidden in the following text.",
        question=f"Find all variables that are assigned the value {value} in the text above.",
        answer_prefix=f"Answer: According to the chain(s) of variable assignment in the text above, {len(names)} "
        f"variables are assigned the value {value}, they are:",
        answers=names,
        needles=list(zip(depths, links)),
    )


@task("common_words", recall_all, max_tokens=64, has_depth=False)
def common_words(rng: random.Random, depth: float | None, tokenizer, num_common: int = 10) -> Spec:
    """A numbered word list where 10 words repeat most; frequencies scale with the list (RULER uses 30 vs 3)."""
    vocab = list(NOUNS)
    rng.shuffle(vocab)
    common, rest = vocab[:num_common], vocab[num_common:] + list(ADJECTIVES)
    list_seed = rng.random()

    def build(num_items: int) -> list[int]:
        r = random.Random(f"{list_seed}:{num_items}")
        common_freq = max(4, min(30, num_items // 20))
        rare_freq = max(1, min(3, common_freq // 10))
        num_rare = max(0, (num_items - num_common * common_freq) // rare_freq)
        rare = r.sample(rest, min(num_rare, len(rest)))
        rare += pseudo_words(num_rare - len(rare), r, set(vocab) | set(ADJECTIVES))
        items = common * common_freq + rare * rare_freq
        r.shuffle(items)
        text = "".join(f"{i}. {w}\n" for i, w in enumerate(items, 1))
        return tokenizer.encode(text, add_special_tokens=False)

    def context(budget: int) -> list[int]:
        num_items = max(1, budget // 5)
        best: list[int] | None = None
        for _ in range(12):  # secant steps on the item count; the list's token count is close to linear in it
            ids = build(num_items)
            if len(ids) <= budget:
                best = ids if best is None or len(ids) > len(best) else best
                if len(ids) > budget - 16:
                    break
            scaled = num_items * budget // max(len(ids), 1)
            num_items = max(1, scaled if scaled != num_items else num_items + (1 if len(ids) <= budget else -1))
        if best is None:
            raise ValueError(f"common_words: a token budget of {budget} is too small for a word list")
        return best

    return Spec(
        instruction="Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often.",
        question=f"What are the {num_common} most common words in the above list?",
        answer_prefix=f"Answer: The top {num_common} words that appear most often in the list are:",
        answers=common,
        context=context,
    )


# -- haystacks and prompt assembly --
class Haystack:
    """Filler split into units at sentence (noise) or line (code) ends, so needles go between whole units and
    the filler keeps the tokenisation it has as one text. Built once per kind and shared by all samples."""

    def __init__(self, kind: str, tokenizer):
        if kind not in HAYSTACKS:
            raise ValueError(f"haystack must be one of {', '.join(HAYSTACKS)}; got {kind!r}")
        self.kind, self.tokenizer = kind, tokenizer
        self._units: list[list[int]] = []
        self._num_tokens = 0
        if kind == "noise":
            self._unit = tokenizer.encode(FILLER, add_special_tokens=False)

    def needle_ids(self, sentence: str) -> list[int]:
        text = " " + sentence if self.kind == "noise" else sentence + "\n"
        return self.tokenizer.encode(text, add_special_tokens=False)

    def units(self, budget: int) -> list[list[int]]:
        """Whole units, in order, of at most `budget` tokens in all."""
        if self.kind == "noise":
            return [self._unit] * (budget // len(self._unit))
        while self._num_tokens < budget:
            self._grow(budget)
        out, total = [], 0
        for unit in self._units:
            if total + len(unit) > budget:
                break
            out.append(unit)
            total += len(unit)
        return out

    def _grow(self, budget: int):
        # NOTE: the stdlib holds ~1.2M tokens of source; past that the text repeats from the start.
        text = stdlib_text(max(4 * budget, 100_000))
        while len(text) < 4 * budget:
            text += text
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        ends_line = {}
        units, start = [], 0
        for i, t in enumerate(ids):
            if t not in ends_line:
                ends_line[t] = self.tokenizer.decode([t]).endswith("\n")
            if ends_line[t]:
                units.append(ids[start : i + 1])
                start = i + 1
        self._units, self._num_tokens = units, sum(map(len, units))

    def fill(self, budget: int, needles: list[tuple[float, str]]) -> list[int]:
        """Filler of at most `budget` tokens with each needle inserted between units at its depth."""
        needle_ids = [(d, self.needle_ids(s)) for d, s in needles]
        units = self.units(budget - sum(len(ids) for _, ids in needle_ids))
        at: dict[int, list[list[int]]] = {}
        for d, ids in needle_ids:
            at.setdefault(round(d * len(units)), []).append(ids)
        out: list[int] = []
        for i in range(len(units) + 1):
            for ids in at.get(i, []):
                out += ids
            if i < len(units):
                out += units[i]
        return out


_MARK = "\u2063HAYSTACK\u2063"  # placeholder split out of the rendered chat template


def _frame(spec: Spec, tokenizer, form: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the context, in completion or chat form."""
    if form == "completion":
        before = tokenizer.encode(spec.instruction + "\n\n")  # with BOS where the model wants one
        after = tokenizer.encode(f"\n\n{spec.question} {spec.answer_prefix}", add_special_tokens=False)
        return before, after
    if form != "chat":
        raise ValueError(f"form must be one of {', '.join(FORMS)}; got {form!r}")
    content = f"{spec.instruction}\n\n{_MARK}\n\n{spec.question}"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    head, tail = rendered.split(_MARK)
    return (
        tokenizer.encode(head, add_special_tokens=False),
        tokenizer.encode(tail + spec.answer_prefix, add_special_tokens=False),
    )


def make_sample(
    task_name: str,
    length: int,
    depth: float | None,
    index: int,
    tokenizer,
    *,
    seed: int = 0,
    form: str = "completion",
    haystack: str = "noise",
    haystacks: dict[str, Haystack] | None = None,
) -> Sample:
    """One prompt of `task_name` whose tokens plus the task's answer budget fit in `length`."""
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; tasks: {', '.join(TASKS)}")
    t = TASKS[task_name]
    if not t.has_depth:
        depth = None
    elif depth is None or not 0.0 <= depth <= 1.0:
        raise ValueError(f"{task_name}: depth must be in [0, 1]; got {depth!r}")
    rng = random.Random(f"{seed}:{task_name}:{length}:{depth}:{index}")
    spec = t.generate(rng, depth, tokenizer)
    before, after = _frame(spec, tokenizer, form)
    budget = length - t.max_tokens - len(before) - len(after)
    if budget <= 0:
        raise ValueError(f"{task_name}: length {length} leaves no room for a context (prompt frame and answer)")
    if spec.context is not None:
        context = spec.context(budget)
    else:
        kind = spec.haystack or haystack
        haystacks = {} if haystacks is None else haystacks
        if kind not in haystacks:
            haystacks[kind] = Haystack(kind, tokenizer)
        context = haystacks[kind].fill(budget, spec.needles)
    return Sample(task_name, length, depth, index, before + context + after, spec.answers, t.max_tokens)


def build_samples(
    tokenizer,
    tasks: list[str],
    lengths: list[int],
    depths: list[float],
    num_samples: int,
    *,
    seed: int = 0,
    form: str = "completion",
    haystack: str = "noise",
) -> list[Sample]:
    """The grid tasks x lengths x depths (tasks without depth: one depth) x num_samples."""
    haystacks: dict[str, Haystack] = {}
    out = []
    for name in tasks:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
        for length in lengths:
            for depth in depths if TASKS[name].has_depth else [None]:
                for i in range(num_samples):
                    out.append(
                        make_sample(
                            name,
                            length,
                            depth,
                            i,
                            tokenizer,
                            seed=seed,
                            form=form,
                            haystack=haystack,
                            haystacks=haystacks,
                        )
                    )
    return out
