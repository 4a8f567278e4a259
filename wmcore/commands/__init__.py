"""The `wm` subcommands of wmcore, one module each: `run(args) -> exit code` (args: wmcore.cli's parse).

wmcore.cli parses the command line and imports only the module of the command given (by name), so a
DVC stage depends on its own command's module and what that reaches (tests/test_dvc_stages.py).
Commands that run Prefect flows (run, serve, screen) and `wm bench` live outside wmcore and are
reached through the `wmdetect.commands` entry points (pyproject.toml).
"""
