"""The command line and the notebook extras: ``agentbook ls | show | history | sql | serve |
demo | bench | doctor`` (:mod:`.main`), the ``%agents``/``%%sql`` magics, the demo and the
capstone simulation, and the environment and store checks."""

from .main import main

__all__ = ["main"]
