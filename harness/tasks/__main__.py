"""`python -m harness.tasks`: print the directory holding every local task (the resolved fixtures
and the embedded model's tasks), for `lm_eval --include_path`."""
from harness.tasks import cli_tasks_dir

print(cli_tasks_dir())
