"""Layer 1: the durable truth. One SQLite file per agent plus a rebuildable catalog."""

from . import health
from .agentstore import AgentStore
from .catalog import Catalog, agent_file
from .sqlaccess import open_reader, query_reader, translate_error

__all__ = ["AgentStore", "Catalog", "agent_file", "health", "open_reader", "query_reader",
           "translate_error"]
