pytest_plugins = [
    "tests.plugins.backends",
    "tests.plugins.sshd",
    "tests.plugins.slurm",
]
