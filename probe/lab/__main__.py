"""``python -m probe.lab ...``: the lab's commands without the main ``probe`` CLI."""

from probe.lab.cli import main

main()
