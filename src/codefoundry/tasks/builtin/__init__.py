"""Built-in problem set data (problems.jsonl); see tests/tasks/test_builtin_data.py for its checks."""
