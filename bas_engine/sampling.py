"""Union sampling: each step trains a random non-empty subset of the concepts, with a joint flip."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

PROMPT_TEMPLATE = "a photo of {}"


@dataclass
class ConceptDraw:
    """One training example: which concepts (in prompt order), the prompt, and whether to flip."""

    concepts: list[int]
    prompt: str
    flip: bool


class ConceptSampler:
    """Draws concept subsets and flips from its own seeded generator (reproducible per seed)."""

    def __init__(self, tokens: Sequence[str], seed: int, union_sampling: bool = True, flip: bool = True,
                 template: str = PROMPT_TEMPLATE):
        if not tokens:
            raise ValueError("tokens: at least one handle is needed")
        self.tokens = list(tokens)
        self.union_sampling, self.flip, self.template = union_sampling, flip, template
        self.rng = random.Random(seed)

    def draw(self) -> ConceptDraw:
        count = len(self.tokens)
        if self.union_sampling:
            size = self.rng.randint(1, count)
            concepts = self.rng.sample(range(count), size)
        else:  # ablation: every concept in every step, in a fixed order
            concepts = list(range(count))
        flip = self.flip and self.rng.random() < 0.5
        return ConceptDraw(concepts, self.prompt_for(concepts), flip)

    def prompt_for(self, concepts: Sequence[int]) -> str:
        return self.template.format(" and ".join(self.tokens[i] for i in concepts))

    def draw_batch(self, batch_size: int) -> list[ConceptDraw]:
        """Each example of a batch draws its own subset and flip."""
        return [self.draw() for _ in range(batch_size)]
