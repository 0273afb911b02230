"""ACP's particle-swarm search over integer layer widths (maximising a fitness).

Textbook PSO with ACP's constants. Deliberate departures from the reference code (methods.md §4):
per-dimension random numbers r1, r2; the same randomly chosen dimensions get both the velocity and the
position update (the code updates the velocity of dimensions 0..7 whatever it picked); velocity first, then
x <- x + v (no extra step factor r = 2); dimensions drawn without replacement from all layers; widths clipped
to [1, original width]. Each fitness value is memoised by position, so an interrupted search re-run with the
same seed replays the same trajectory and only evaluates what it had not reached.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class SwarmSettings:
    particles: int = 10
    cycles: int = 8
    c1: float = 2.0
    c2: float = 2.0
    constriction: float = 0.729
    max_velocity: float = 2.0
    dims_per_move: int = 8  # ACP's channelchange_num
    seed: int = 0


def inertia(cycle: int, cycles: int) -> float:
    """The reference's schedule, w_k = 0.5 (K - k) / 20 + 0.4: 0.60 at k = 0 down to 0.425 for K = 8."""
    return 0.5 * (cycles - cycle) / 20 + 0.4


@dataclass
class SwarmResult:
    best_position: list[int]
    best_fitness: float
    evaluations: int
    history: list[dict] = field(default_factory=list)  # one record per cycle: gbest so far


class FitnessMemo:
    """Fitness values by position, optionally persisted (atomically) to a JSON file after every evaluation."""

    def __init__(self, fitness: Callable[[list[int]], float], path: Path | None = None) -> None:
        self.fitness, self.path = fitness, path
        self.values: dict[str, float] = json.loads(path.read_text()) if path and path.exists() else {}

    def __call__(self, position: Sequence[int]) -> float:
        key = ",".join(str(int(v)) for v in position)
        if key not in self.values:
            self.values[key] = float(self.fitness([int(v) for v in position]))
            if self.path is not None:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.values))
                tmp.replace(self.path)
        return self.values[key]


def initial_swarm(center: Sequence[int], upper: Sequence[int], particles: int, rng: np.random.Generator) -> np.ndarray:
    """ACP's seeding: particle i = center + i * s, s uniform in {-1, 0, +1} per dimension (particle 0 = center)."""
    center, upper = np.asarray(center), np.asarray(upper)
    steps = rng.integers(-1, 2, size=(particles, len(center)))
    return np.clip(center + np.arange(particles)[:, None] * steps, 1, upper)


def particle_swarm(
    fitness: Callable[[list[int]], float],
    center: Sequence[int],
    upper: Sequence[int],
    settings: SwarmSettings | None = None,
    memo_path: Path | None = None,
) -> SwarmResult:
    """Maximise ``fitness`` over integer vectors in [1, upper], starting around ``center``."""
    s = settings or SwarmSettings()
    rng = np.random.default_rng(s.seed)
    upper_arr = np.asarray(upper)
    evaluate = FitnessMemo(fitness, memo_path)
    x = initial_swarm(center, upper, s.particles, rng)
    v = rng.uniform(-s.max_velocity, s.max_velocity, size=x.shape)
    scores = np.array([evaluate(p) for p in x])
    pbest, pbest_score = x.copy(), scores.copy()
    g = int(np.argmax(scores))
    gbest, gbest_score = x[g].copy(), float(scores[g])
    history = [{"cycle": 0, "best_fitness": gbest_score, "best_position": gbest.tolist()}]
    dims = len(center)
    for cycle in range(s.cycles):
        w = inertia(cycle, s.cycles)
        for i in range(s.particles):
            chosen = rng.choice(dims, size=min(s.dims_per_move, dims), replace=False)
            r1, r2 = rng.uniform(size=len(chosen)), rng.uniform(size=len(chosen))
            v[i, chosen] = s.constriction * (
                w * v[i, chosen]
                + s.c1 * r1 * (pbest[i, chosen] - x[i, chosen])
                + s.c2 * r2 * (gbest[chosen] - x[i, chosen])
            )
            v[i, chosen] = np.clip(v[i, chosen], -s.max_velocity, s.max_velocity)
            x[i, chosen] = np.clip(np.rint(x[i, chosen] + v[i, chosen]), 1, upper_arr[chosen]).astype(x.dtype)
            score = evaluate(x[i])
            if score > pbest_score[i]:
                pbest[i], pbest_score[i] = x[i].copy(), score
                if score > gbest_score:
                    gbest, gbest_score = x[i].copy(), score
        history.append({"cycle": cycle + 1, "best_fitness": gbest_score, "best_position": gbest.tolist()})
    return SwarmResult([int(c) for c in gbest], gbest_score, len(evaluate.values), history)
