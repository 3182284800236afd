pytest_plugins = [
    "tests.plugins.backends",
    "tests.plugins.projects",
    "tests.plugins.sshd",
    "tests.plugins.slurm",
    "tests.plugins.vastfake",
    "tests.plugins.modalfake",
]
