"""search: trial-epochs that TPE + ASHA spend to come within 0.5 point of the grid's best, over those of random
search without early stopping, on a synthetic study (seeded; seconds, not hours).

The objective mimics a training run: a validation score per epoch that rises towards a final value which
depends on (log learning rate, log cross-attention scale) through one smooth optimum, plus seeded noise. The
grid (6 x 6) defines the target: its best final score - 0.5. Each searcher runs trials one after another and
is charged every epoch it trains until some trial first reports a score at or above the target. TPE + ASHA is
Optuna's TPE sampler with its asynchronous successive-halving pruner (grace 1 epoch, reduction factor 3), as
a study's searcher + scheduler; random search trains every trial for the whole budget. Means over seeds.
Headline ratio: TPE+ASHA epochs / random epochs (goal <= 0.4).
"""
from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import optuna

from benchmarks.common import emit, parser

GOAL = 0.4
EPOCHS = 27  # ASHA rungs at 1, 3, 9, 27 epochs
LOG_LR, LOG_SCALE = (-4.0, -1.0), (-2.0, 0.0)
MAX_TRIALS = 300


def final_score(log_lr: float, log_scale: float) -> float:
    return 90.0 + 8.0 * math.exp(-((log_lr + 2.4) ** 2) / (2 * 0.45**2) - ((log_scale + 0.9) ** 2) / (2 * 0.5**2))


def score(log_lr: float, log_scale: float, epoch: int, seed: int) -> float:
    """Learning curve: higher learning rates learn faster, so early ranks are informative but imperfect (a low
    learning rate near the optimum starts behind); noise is a pure function of the point and epoch."""
    time_constant = 3.0 + abs(log_lr + 1.0)
    noise = np.random.default_rng([seed, epoch, int(1e6 * (log_lr + 5)), int(1e6 * (log_scale + 3))]).normal(0, 0.15)
    return final_score(log_lr, log_scale) - 30.0 * math.exp(-epoch / time_constant) + noise


def grid_target() -> float:
    axis = lambda low, high: np.linspace(low, high, 6)  # noqa: E731
    best = max(final_score(lr, scale) for lr, scale in itertools.product(axis(*LOG_LR), axis(*LOG_SCALE)))
    return best - 0.5


def epochs_to_target(sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner, target: float,
                     seed: int) -> int | None:
    """Epochs trained until a reported score reaches the target; None if MAX_TRIALS never do."""
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    spent = 0
    for _ in range(MAX_TRIALS):
        trial = study.ask()
        log_lr, log_scale = trial.suggest_float("log_lr", *LOG_LR), trial.suggest_float("log_scale", *LOG_SCALE)
        value = -math.inf
        for epoch in range(1, EPOCHS + 1):
            value = score(log_lr, log_scale, epoch, seed)
            spent += 1
            if value >= target:
                return spent
            trial.report(value, epoch)
            if trial.should_prune():
                break
        study.tell(trial, value)  # a stopped trial counts with its last score, as ASHA reports it to Optuna
    return None


def run_searchers(seeds: list[int], target: float) -> dict[str, list[int | None]]:
    asha = lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)  # noqa: E731
    return {
        "tpe_asha": [epochs_to_target(optuna.samplers.TPESampler(seed=s), asha(), target, s) for s in seeds],
        "random": [epochs_to_target(optuna.samplers.RandomSampler(seed=s), optuna.pruners.NopPruner(), target, s)
                   for s in seeds],
    }


def mean_epochs(values: list[int | None]) -> float:
    return statistics.mean(value if value is not None else MAX_TRIALS * EPOCHS for value in values)


def main(argv: list[str]) -> None:
    args = parser(__doc__).parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = [0] if args.smoke else list(range(10))
    target = grid_target()
    runs = run_searchers(seeds, target)
    tpe, random = mean_epochs(runs["tpe_asha"]), mean_epochs(runs["random"])
    figures = {"seeds": len(seeds), "target": target, "epochs_per_trial": EPOCHS, "grid_epochs": 36 * EPOCHS,
               "tpe_asha_epochs": runs["tpe_asha"], "random_epochs": runs["random"],
               "tpe_asha_mean": tpe, "random_mean": random, "ratio": tpe / random, "goal": GOAL}
    emit("search", figures, f"epochs to within 0.5 of the grid's best ({target + 0.5:.2f}): TPE+ASHA {tpe:.0f}, "
         f"random without stopping {random:.0f} (full grid {36 * EPOCHS}), ratio {tpe / random:.2f} (goal {GOAL})",
         args.json)
