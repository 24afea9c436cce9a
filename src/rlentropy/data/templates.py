"""Prompt templates: how a raw question becomes the prompt text, and how the answer must be written.

| name  | prompt                                                                 | answer format          | stop          |
|-------|------------------------------------------------------------------------|------------------------|---------------|
| plain | "Question: {q}\\n" + boxed instruction + "\\nAnswer:" (no chat markup)  | `\\boxed{}` (fallback `####`, `Answer:`) | "\\nQuestion:" |
| r1    | the researcher seed's R1 text, ending "Response: <think>"              | `</think> <answer> … </answer>` | "</answer>" |
| dapo  | the DAPO-Math instruction wrapper as one user message, chat template applied when the tokenizer has one | last line `Answer: …` | – |
| chat  | "{q}" + boxed instruction as one user message, the tokenizer's chat template | `\\boxed{}` (fallbacks as plain) | – |
| raw   | "{q}" exactly as the dataset gives it (no instruction, no chat markup)  | any (`auto` extraction; for your own reward) | – |
| raw_chat | "{q}" as one user message of the tokenizer's chat template, nothing added | as raw | – |

`dapo_wrap` / `dapo_unwrap` reproduce the DAPO-Math-17k upstream prompt byte for byte (see
data/dapo_math_17k/SOURCE.md): `dapo_wrap(dapo_unwrap(upstream)) == upstream`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlentropy.errors import ConfigError

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# The researcher seed's R1 template (PhilSaad333/RL_Practice, rlp_datasets/gsm8k_r1_template.py).
R1_SYSTEM = (
    "You are solving math problems. Respond by reasoning through the problem "
    "then providing a final answer. Enclose the reasoning process within <think> </think> "
    "and the answer within <answer> </answer> tags, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>.\n"
)
R1_PREFIX = "<think>"

DAPO_HEAD = (
    "Solve the following math problem step by step. The last line of your response should be of "
    "the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_TAIL = '\n\nRemember to put your answer on its own line after "Answer:".'


def dapo_wrap(problem: str) -> str:
    """The DAPO-Math-17k user message for `problem` (upstream format, byte for byte)."""
    return DAPO_HEAD + problem + DAPO_TAIL


def dapo_unwrap(text: str) -> str:
    """Inverse of `dapo_wrap`; a text without the wrapper is returned unchanged."""
    if text.startswith(DAPO_HEAD) and text.endswith(DAPO_TAIL):
        return text[len(DAPO_HEAD) : len(text) - len(DAPO_TAIL)]
    return text


def _has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def apply_chat(tokenizer: Any, user_text: str, *, system: str | None = None) -> str:
    """`user_text` as one user turn in the tokenizer's chat template, with the generation prompt."""
    if not _has_chat_template(tokenizer):
        raise ConfigError(
            "data.template: the 'chat' template needs a tokenizer with a chat template "
            "(tokenizer.chat_template is empty); use data.template=plain or r1"
        )
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
    out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(out, str):  # some tokenizers return a list for a single conversation
        out = out[0]
    return out


@dataclass(frozen=True)
class Template:
    """A prompt template.

    Attributes:
        name: registry name.
        answer_style: extraction style for scoring (`rlentropy.rewards.extract_answer`).
        stop_strings: strings that end generation (kept in the completion).
        completion_prefix: format text the prompt already wrote on behalf of the response
            (R1: "<think>"), prepended before checking the response's format.
        require_format: reward = format × correctness (R1, as the researcher seed did).
    """

    name: str
    answer_style: str
    stop_strings: tuple[str, ...] = ()
    completion_prefix: str = ""
    require_format: bool = False

    def render(self, question: str, tokenizer: Any = None) -> str:
        """The full prompt text for `question`."""
        if self.name == "plain":
            return f"Question: {question}\n{BOXED_INSTRUCTION}\nAnswer:"
        if self.name == "r1":
            return f"{R1_SYSTEM}Question: {question}\nResponse: <think>"
        if self.name == "dapo":
            text = dapo_wrap(question)
            return apply_chat(tokenizer, text) if _has_chat_template(tokenizer) else text + "\n"
        if self.name == "chat":
            return apply_chat(tokenizer, f"{question}\n{BOXED_INSTRUCTION}")
        if self.name == "raw":
            return question
        if self.name == "raw_chat":
            return apply_chat(tokenizer, question)
        raise ConfigError(f"data.template: unknown template {self.name!r}")

    def format_answer(self, answer: str, reasoning: str = "Let me think.") -> str:
        """A completion that writes `answer` correctly in this template's format (for tests,
        SFT warm-up data and documentation)."""
        if self.name == "r1":
            return f" {reasoning} </think> <answer> {answer} </answer>"
        if self.name == "dapo":
            return f"{reasoning}\nAnswer: {answer}"
        return f"{reasoning} The final answer is $\\boxed{{{answer}}}$."


TEMPLATES: dict[str, Template] = {
    "plain": Template("plain", "boxed+gsm8k+dapo", stop_strings=("\nQuestion:",)),
    "r1": Template("r1", "r1", stop_strings=("</answer>",), completion_prefix=R1_PREFIX, require_format=True),
    "dapo": Template("dapo", "dapo"),
    "chat": Template("chat", "boxed+gsm8k+dapo"),
    "raw": Template("raw", "auto"),
    "raw_chat": Template("raw_chat", "auto"),
}


def get_template(name: str) -> Template:
    """The template called `name` (ConfigError naming data.template otherwise)."""
    if name not in TEMPLATES:
        raise ConfigError(f"data.template: unknown template {name!r}; allowed: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]
