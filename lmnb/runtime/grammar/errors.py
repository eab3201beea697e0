"""The grammar layer's one error type.

Owns `GrammarError`: a constraint (regex, JSON schema, choices) that cannot be compiled, or a
token that a grammar state rejects. Knows nothing of where the constraint came from.
"""

from __future__ import annotations


class GrammarError(ValueError):
    """A constraint that cannot be compiled, or a token its grammar rejects; says which."""
