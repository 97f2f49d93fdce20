"""``python -m probe.collector serve ...``: the collector without the ``probe`` entry point."""

from probe.collector.cli import collector

if __name__ == "__main__":
    collector(prog_name="python -m probe.collector")
