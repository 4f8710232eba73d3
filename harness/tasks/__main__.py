"""`python -m harness.tasks`: print the directory of the resolved fixture tasks (for
`lm_eval --include_path`)."""
from harness.tasks import fixture_dir

print(fixture_dir())
