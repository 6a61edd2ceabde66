"""Lets `pytest suites/` work from a checkout even when fieldrig is not pip-installed.

An installed fieldrig registers its plugin through the pytest11 entry point; registering it
again here would be an error, so this only steps in when that entry point is absent.
"""

from importlib.metadata import entry_points

if not any(ep.name == "fieldrig" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["bench.plugin"]
