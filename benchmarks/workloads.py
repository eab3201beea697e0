"""The SGLang paper's workloads as lmnb programs, on deterministic synthetic data.

Each workload is one `@lm.function` written once, and a list of argument dicts for
`run_batch`; every system runs the same program on the same items. Shapes follow the paper
(shot counts, choice counts, fork widths and depths, turns); lengths are scaled so that the
whole suite runs in minutes on a 2-core CPU (`Sizes`). Data comes from `synthetic`.

Knows nothing of systems, timing or reports (`bench_programs` does that).
"""

from __future__ import annotations

import ast
import operator
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import synthetic as syn

import lmnb as lm

# ---- sizes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How many programs each workload runs and how long their pieces are (in tokens where a
    field says `tokens`; message lengths are in sentences of ~13 tokens)."""

    mmlu_subjects: int = 2
    mmlu_questions: int = 2  # per subject
    mmlu_shots: int = 5
    hellaswag_questions: int = 3
    hellaswag_shots: int = 20
    react_programs: int = 3
    react_steps: int = 3
    tot_programs: int = 2
    tot_width: int = 3
    tot_depth: int = 3
    sot_programs: int = 3
    sot_points: int = 3
    judge_programs: int = 3
    judge_dimensions: int = 6
    json_programs: int = 6
    chat_programs: int = 8  # chats running at once
    chat_turns: int = 4
    # the paper: messages of 256-512 tokens, replies of 4-8 (short) or 256-512 (long) tokens;
    # long replies are a quarter of that here (8 chats of 4 x 384 decoded tokens at ~2-3k
    # tokens of context take ~7 min per system on 2 cores)
    chat_sentences: tuple[int, int] = (20, 40)  # ~260-520 tokens
    chat_short_tokens: tuple[int, int] = (4, 8)  # a reply, exactly this many tokens
    chat_long_tokens: tuple[int, int] = (64, 128)
    rag_programs: int = 4
    rag_docs: int = 12
    rag_top_k: int = 3
    gen_tokens: int = 16  # the longest free-text gen of the other programs
    seed: int = 0


FULL = Sizes()
QUICK = Sizes(mmlu_subjects=1, mmlu_questions=2, mmlu_shots=2, hellaswag_questions=2,
              hellaswag_shots=3, react_programs=1, react_steps=1, tot_programs=1,
              tot_width=2, tot_depth=2, sot_programs=1, sot_points=2, judge_programs=1,
              judge_dimensions=2, json_programs=2, chat_programs=2, chat_turns=2,
              chat_sentences=(1, 2), chat_short_tokens=(2, 3), chat_long_tokens=(4, 5),
              rag_programs=2, rag_docs=4, rag_top_k=1, gen_tokens=3)


@dataclass(frozen=True)
class Workload:
    """A program, the items it runs on, and what the report says about its shape.

    `group` names the claim a workload belongs to (`few-shot`, `tree`, `multi-turn` carry the
    speedup targets; `other` only the hit-rate one).
    """

    name: str
    group: str
    program: Any  # lm.Function
    items: list[dict[str, Any]]
    shape: str
    max_tokens: int  # the run's default for gens that do not set their own


# ---- few-shot selection -------------------------------------------------------------------


@lm.function
def mmlu(s, examples, question):
    s += examples
    s += question
    s += lm.select("answer", choices=[f" {letter}" for letter in syn.LETTERS])


@lm.function
def hellaswag(s, examples, context, endings):
    s += examples
    s += context
    s += lm.select("ending", choices=list(endings))


def mmlu_workload(z: Sizes) -> Workload:
    rng = random.Random(z.seed)
    items = []
    for subject in syn.SUBJECTS[: z.mmlu_subjects]:
        header = f"The following are multiple choice questions about {subject}.\n\n"
        shots = "".join(syn.mmlu_text(syn.mmlu_item(rng, subject), True)
                        for _ in range(z.mmlu_shots))
        for _ in range(z.mmlu_questions):
            question = syn.mmlu_text(syn.mmlu_item(rng, subject), False)
            items.append({"examples": header + shots, "question": question})
    shape = (f"{z.mmlu_shots}-shot, {z.mmlu_subjects} subjects x {z.mmlu_questions} "
             f"questions, select of 4")
    return Workload("mmlu", "few-shot", mmlu, items, shape, z.gen_tokens)


def hellaswag_workload(z: Sizes) -> Workload:
    rng = random.Random(z.seed + 1)
    shots = []
    for _ in range(z.hellaswag_shots):
        item = syn.hellaswag_item(rng)
        shots.append(item.stem + item.options[item.answer] + "\n\n")
    items = []
    for _ in range(z.hellaswag_questions):
        item = syn.hellaswag_item(rng)
        items.append({"examples": "".join(shots), "context": item.stem,
                      "endings": list(item.options)})
    shape = f"{z.hellaswag_shots}-shot, {z.hellaswag_questions} questions, select of 4 endings"
    return Workload("hellaswag", "few-shot", hellaswag, items, shape, z.gen_tokens)


# ---- ReAct agent --------------------------------------------------------------------------

ACTION_REGEX = r"(calculate\[[0-9+*() -]{1,24}\]|lookup\[[A-Za-z]{1,12}\]|finish\[[0-9]{1,9}\])"
REACT_HEADER = (
    "Answer the question by interleaving Thought, Action and Observation steps. Actions are "
    "lookup[country] (the population of a country), calculate[expression] (integer "
    "arithmetic) and finish[answer].\n\n"
    "Question: What is the population of Velmar plus 1000?\n"
    "Thought 1: I need the population of Velmar first.\n"
    "Action 1: lookup[Velmar]\n"
    "Observation 1: 52000\n"
    "Thought 2: Now I add 1000 to 52000.\n"
    "Action 2: calculate[52000 + 1000]\n"
    "Observation 2: 53000\n"
    "Thought 3: The answer is 53000.\n"
    "Action 3: finish[53000]\n\n"
)


def run_tool(action: str, populations: dict[str, int]) -> tuple[str, bool]:
    """The observation for an action, and whether the action ends the episode."""
    match = re.fullmatch(r"(\w+)\[(.*)\]", action.strip())
    if match is None:
        return "invalid action", False
    tool, arg = match.groups()
    if tool == "finish":
        return arg, True
    if tool == "lookup":
        return str(populations.get(arg, "unknown country")), False
    try:
        return str(safe_eval(arg)), False
    except (ValueError, SyntaxError, ZeroDivisionError):
        return "cannot calculate that", False


_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def safe_eval(expr: str) -> int:
    """Integer arithmetic with + - * and parentheses, nothing else."""
    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(f"not integer arithmetic: {expr!r}")

    return ev(ast.parse(expr, mode="eval").body)


@lm.function
def react(s, question, populations, max_steps):
    s += REACT_HEADER
    s += f"Question: {question}\n"
    for i in range(1, max_steps + 1):
        s += f"Thought {i}:" + lm.gen(f"thought{i}", stop="\n") + "\n"
        s += f"Action {i}: " + lm.gen(f"action{i}", regex=ACTION_REGEX, max_tokens=16) + "\n"
        observation, done = run_tool(s[f"action{i}"], populations)
        s += f"Observation {i}: {observation}\n"
        if done:
            break


def react_workload(z: Sizes) -> Workload:
    rng = random.Random(z.seed + 2)
    populations = {c: rng.randint(10, 900) * 1000 for c in syn.COUNTRIES}
    items = []
    for _ in range(z.react_programs):
        a, b = rng.sample(syn.COUNTRIES, 2)
        question = f"What is the population of {a} plus the population of {b}?"
        items.append({"question": question, "populations": populations,
                      "max_steps": z.react_steps})
    shape = f"{z.react_programs} agents, up to {z.react_steps} thought/action/tool steps"
    return Workload("react", "other", react, items, shape, z.gen_tokens)


# ---- fork / join --------------------------------------------------------------------------

TOT_HEADER = ("Solve the problem step by step. At each step, propose one short next step of "
              "the calculation.\n\n")


def expand(s, width: int, depth: int, level: int) -> None:
    """Fork `width` next steps from `s`, and recurse until `depth` levels are below it."""
    if level > depth:
        return
    forks = s.fork(width)
    for i, f in enumerate(forks):
        f += f"\nStep {level}, idea {i + 1}:"
        f += lm.gen("thought", stop="\n")
        expand(f, width, depth, level + 1)
    forks.join()


@lm.function
def tree_of_thought(s, problem, width, depth):
    s += TOT_HEADER
    s += "Problem: " + problem
    expand(s, width, depth, 1)


def tot_workload(z: Sizes) -> Workload:
    rng = random.Random(z.seed + 3)
    items = [{"problem": syn.word_problem(rng)[0], "width": z.tot_width, "depth": z.tot_depth}
             for _ in range(z.tot_programs)]
    nodes = sum(z.tot_width ** d for d in range(1, z.tot_depth + 1))
    shape = (f"{z.tot_programs} problems, fork {z.tot_width} x depth {z.tot_depth} "
             f"({nodes} thoughts of <= {z.gen_tokens} tokens each)")
    return Workload("tree_of_thought", "tree", tree_of_thought, items, shape, z.gen_tokens)


SOT_HEADER = ("You answer in two stages. First write a skeleton: a numbered list of short "
              "points, three to five words each. Then expand every point on its own.\n\n")


@lm.function
def skeleton_of_thought(s, question, num_points):
    s += SOT_HEADER
    s += f"Question: {question}\nSkeleton:\n"
    for i in range(1, num_points + 1):
        s += f"{i}." + lm.gen(f"point{i}", stop="\n") + "\n"
    forks = s.fork(num_points)
    for i, f in enumerate(forks):
        f += f"Expanding point {i + 1} in two sentences:"
        f += lm.gen("expansion", stop="\n\n")
    forks.join()


def sot_workload(z: Sizes) -> Workload:
    rng = random.Random(z.seed + 4)
    items = [{"question": f"How does the {rng.choice(syn.NOUNS)} affect the "
                          f"{rng.choice(syn.NOUNS)} {rng.choice(syn.PLACES)}?",
              "num_points": z.sot_points}
             for _ in range(z.sot_programs)]
    shape = (f"{z.sot_programs} questions, {z.sot_points}-point skeleton, fork "
             f"{z.sot_points} expansions, gens of <= {z.gen_tokens} tokens")
    return Workload("skeleton_of_thought", "other", skeleton_of_thought, items, shape,
                    z.gen_tokens)


JUDGE_HEADER = ("You are a strict reviewer. Read the question and the answer, then judge the "
                "answer on the requested dimension and give a score from 1 to 5.\n\n")


@lm.function
def llm_judge(s, question, answer, dimensions):
    s += JUDGE_HEADER
    s += f"Question: {question}\nAnswer: {answer}\n"
    forks = s.fork(len(dimensions))
    for dim, f in zip(dimensions, forks):
        f += f"Dimension: {dim}.\nReasoning:" + lm.gen("judgment", stop="\n")
        f += "\nScore: " + lm.gen("score", regex="[1-5]")
    forks.join()
    scores = ", ".join(f"{d} {v}" for d, v in zip(dimensions, s["score"]))
    s += f"Scores: {scores}.\nOverall verdict:" + lm.gen("verdict", stop="\n")


def judge_workload(z: Sizes) -> Workload:
    rng = random.Random(z.seed + 5)
    dims = list(syn.DIMENSIONS[: z.judge_dimensions])
    items = [{"question": f"Why does the {rng.choice(syn.NOUNS)} matter?",
              "answer": syn.paragraph(rng, 4), "dimensions": dims}
             for _ in range(z.judge_programs)]
    shape = (f"{z.judge_programs} answers, fork {z.judge_dimensions} dimensions "
             f"(reasoning + score), join, verdict")
    return Workload("llm_judge", "other", llm_judge, items, shape, z.gen_tokens)


# ---- constrained decoding -----------------------------------------------------------------

CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "country": {"enum": list(syn.COUNTRIES)},
        "population": {"type": "integer", "minimum": 0, "maximum": 100_000_000},
        "founded": {"type": "integer", "minimum": 0, "maximum": 2100},
        "coastal": {"type": "boolean"},
    },
    "required": ["name", "country", "population", "founded", "coastal"],
    "additionalProperties": False,
}
JSON_HEADER = ("Extract the facts of the page as JSON with the keys name, country, population, "
               "founded and coastal.\n\n")


@lm.function
def json_decode(s, page):
    s += JSON_HEADER
    s += f"Page: {page}\nJSON: "
    s += lm.gen("json", json_schema=CITY_SCHEMA, max_tokens=64)


def json_workload(z: Sizes) -> Workload:
    rng = random.Random(z.seed + 6)
    items = [{"page": syn.city_page(rng)["text"]} for _ in range(z.json_programs)]
    shape = f"{z.json_programs} pages -> 5-field JSON schema (enum, bounded ints, bool)"
    return Workload("json_decode", "other", json_decode, items, shape, z.gen_tokens)


# ---- chat and retrieval -------------------------------------------------------------------

CHAT_SYSTEM = "You are a helpful assistant. Keep every answer short and to the point."


@lm.function
def multi_turn_chat(s, turns, reply_tokens):
    s += lm.system(CHAT_SYSTEM)
    for i, (turn, n) in enumerate(zip(turns, reply_tokens)):
        s += lm.user(turn)
        s += lm.assistant(lm.gen(f"reply{i}", max_tokens=n, min_tokens=n, ignore_eos=True))


def chat_workload(z: Sizes, long: bool) -> Workload:
    """The paper's multi-turn chat: 4 turns of long user messages; replies of a fixed length
    (short: a few tokens; long: scaled down from the paper's 256-512)."""
    rng = random.Random(z.seed + (8 if long else 7))
    lo, hi = z.chat_long_tokens if long else z.chat_short_tokens
    items = []
    for _ in range(z.chat_programs):
        turns = [syn.chat_message(rng, rng.randint(*z.chat_sentences))
                 for _ in range(z.chat_turns)]
        items.append({"turns": turns,
                      "reply_tokens": [rng.randint(lo, hi) for _ in range(z.chat_turns)]})
    name = "multi_turn_long" if long else "multi_turn_short"
    shape = (f"{z.chat_programs} chats x {z.chat_turns} turns, messages of "
             f"{z.chat_sentences[0]}-{z.chat_sentences[1]} sentences, replies of {lo}-{hi} "
             f"tokens")
    return Workload(name, "multi-turn", multi_turn_chat, items, shape, hi)


RAG_SYSTEM = "Answer the question from the context only. Be brief."


def retrieve(question: str, docs: list[str], k: int) -> list[str]:
    """The k documents sharing the most words with the question (ties: corpus order)."""
    words = set(re.findall(r"[a-z]+", question.lower()))
    scores = [len(words & set(re.findall(r"[a-z]+", d.lower()))) for d in docs]
    order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
    return [docs[i] for i in order[:k]]


@lm.function
def rag(s, question, docs, top_k):
    context = "\n".join(retrieve(question, docs, top_k))
    s += lm.system(RAG_SYSTEM)
    s += lm.user(f"Context:\n{context}\n\nQuestion: {question}")
    s += lm.assistant(lm.gen("answer"))
    s += lm.user("Is that answer supported by the context? Reply yes or no.")
    s += lm.assistant(lm.select("supported", choices=["yes", "no"]))


def rag_workload(z: Sizes) -> Workload:
    rng = random.Random(z.seed + 9)
    docs = syn.documents(rng, z.rag_docs, 4)
    items = [{"question": syn.rag_question(rng), "docs": docs, "top_k": z.rag_top_k}
             for _ in range(z.rag_programs)]
    shape = (f"{z.rag_programs} questions over {z.rag_docs} documents, top-{z.rag_top_k} "
             f"retrieval, answer + supported? select")
    return Workload("rag", "other", rag, items, shape, z.gen_tokens)


# ---- the suite ----------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[Sizes], Workload]] = {
    "mmlu": mmlu_workload,
    "hellaswag": hellaswag_workload,
    "react": react_workload,
    "tree_of_thought": tot_workload,
    "skeleton_of_thought": sot_workload,
    "llm_judge": judge_workload,
    "json_decode": json_workload,
    "multi_turn_short": lambda z: chat_workload(z, long=False),
    "multi_turn_long": lambda z: chat_workload(z, long=True),
    "rag": rag_workload,
}
NAMES = tuple(BUILDERS)


def build(names: list[str], sizes: Sizes) -> list[Workload]:
    return [BUILDERS[name](sizes) for name in names]
