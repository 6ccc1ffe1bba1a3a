"""Problems, benchmarks and the one verdict (`evaluate`) that scores a completion by executing it."""

from codefoundry.tasks.problem import ExecutionTask, Problem, Score, Task, evaluate, evaluate_many
from codefoundry.tasks.registry import TASKS, get_task, load_problems_file

__all__ = ["TASKS", "ExecutionTask", "Problem", "Score", "Task", "evaluate", "evaluate_many", "get_task",
           "load_problems_file"]  # fmt: skip
