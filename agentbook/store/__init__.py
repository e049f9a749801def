"""Layer 1: the durable truth. One SQLite file per agent plus a rebuildable catalog."""

from . import health, lease
from .agentstore import AgentStore
from .catalog import Catalog, agent_file, class_name_problem, folded
from .sqlaccess import open_reader, query_reader, translate_error

__all__ = ["AgentStore", "Catalog", "agent_file", "class_name_problem", "folded", "health",
           "lease", "open_reader", "query_reader", "translate_error"]
