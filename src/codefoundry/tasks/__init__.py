"""Problems, benchmarks and the one verdict (`evaluate`) that scores a completion by executing it."""

from codefoundry.tasks.problem import Problem, Score, evaluate, evaluate_many

__all__ = ["Problem", "Score", "evaluate", "evaluate_many"]
