pytest_plugins = [
    "tests.plugins.backends",
    "tests.plugins.projects",
    "tests.plugins.sshd",
    "tests.plugins.slurm",
]
