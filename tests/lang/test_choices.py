"""The select methods on hand-made log-probabilities."""

from __future__ import annotations

import pytest

import lmnb as lm


def test_token_length_normalized_picks_the_best_mean():
    decision = lm.token_length_normalized.decide([[-1.0, -3.0], [-2.5], [-0.5, -5.0]], None)
    assert decision.index == 0
    assert decision.scores == [-2.0, -2.5, -2.75]


def test_greedy_token_selection_compares_token_by_token():
    # choice 1 wins at the first token although its mean is worse
    decision = lm.greedy_token_selection.decide([[-1.0, -0.1], [-0.5, -9.0]], None)
    assert decision.index == 1
    # a tie at the first token is broken by the next; a short choice is padded with its mean
    decision = lm.greedy_token_selection.decide([[-1.0], [-1.0, -0.5]], None)
    assert decision.index == 1


def test_unconditional_likelihood_normalized_subtracts_the_prior():
    logprobs = [[-1.0, -1.0], [-2.0, -2.0]]
    unconditional = [[0.0, -0.5], [0.0, -4.0]]
    decision = lm.unconditional_likelihood_normalized.decide(logprobs, unconditional)
    assert decision.index == 1
    assert decision.scores == [-0.75, 0.0]
    with pytest.raises(ValueError):
        lm.unconditional_likelihood_normalized.decide(logprobs, None)


def test_ties_go_to_the_first_choice():
    assert lm.token_length_normalized.decide([[-1.0], [-1.0]], None).index == 0
