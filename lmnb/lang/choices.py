"""How `select` picks among choices from their token log-probabilities.

Owns the three SGLang choice methods. Knows nothing of the model: the interpreter hands each
method the per-token log-probabilities of every choice given the prefix (and, for
`unconditional_likelihood_normalized`, given no prefix), already computed in one batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from statistics import fmean
from typing import Any


@dataclass(frozen=True)
class ChoiceDecision:
    index: int
    scores: list[float]  # one per choice; what the method ranked by
    meta: dict[str, Any]


class ChoicesMethod(ABC):
    """Contract: `decide` gets one list of token logprobs per choice (each non-empty, in order)
    and returns the chosen index with a score per choice. Ties go to the earliest choice."""

    needs_unconditional: bool = False

    @abstractmethod
    def decide(
        self, logprobs: list[list[float]], unconditional: list[list[float]] | None
    ) -> ChoiceDecision: ...

    def __repr__(self) -> str:
        return type(self).__name__


class TokenLengthNormalized(ChoicesMethod):
    """The choice with the highest mean token log-probability given the prefix."""

    def decide(
        self, logprobs: list[list[float]], unconditional: list[list[float]] | None
    ) -> ChoiceDecision:
        scores = [fmean(lp) for lp in logprobs]
        return ChoiceDecision(_argmax(scores), scores, {})


class GreedyTokenSelection(ChoicesMethod):
    """Compare choices token by token, keeping those with the best logprob at each position.

    A shorter choice is padded with its own mean logprob, so that a choice that is a prefix of
    a longer one can still be compared past its end.
    """

    def decide(
        self, logprobs: list[list[float]], unconditional: list[list[float]] | None
    ) -> ChoiceDecision:
        width = max(len(lp) for lp in logprobs)
        rows = [lp + [fmean(lp)] * (width - len(lp)) for lp in logprobs]
        remaining = list(range(len(rows)))
        for j in range(width):
            best = max(rows[i][j] for i in remaining)
            remaining = [i for i in remaining if rows[i][j] == best]
            if len(remaining) == 1:
                break
        scores = [fmean(lp) for lp in logprobs]
        return ChoiceDecision(remaining[0], scores, {"greedy_logprob_matrix": rows})


class UnconditionalLikelihoodNormalized(ChoicesMethod):
    """The highest mean of (logprob given the prefix - logprob given nothing) over tokens."""

    needs_unconditional = True

    def decide(
        self, logprobs: list[list[float]], unconditional: list[list[float]] | None
    ) -> ChoiceDecision:
        if unconditional is None:
            raise ValueError("unconditional_likelihood_normalized needs unconditional logprobs")
        scores = [fmean(a - b for a, b in zip(lp, un)) for lp, un in zip(logprobs, unconditional)]
        return ChoiceDecision(_argmax(scores), scores, {})


def _argmax(scores: list[float]) -> int:
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()

METHODS: dict[str, ChoicesMethod] = {
    "token_length_normalized": token_length_normalized,
    "greedy_token_selection": greedy_token_selection,
    "unconditional_likelihood_normalized": unconditional_likelihood_normalized,
}


def resolve_method(method: ChoicesMethod | str | None) -> ChoicesMethod:
    if method is None:
        return token_length_normalized
    if isinstance(method, ChoicesMethod):
        return method
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(f"unknown choices_method {method!r}; one of {sorted(METHODS)}") from None
