"""The tables agentbook keeps inside every agent's store, as named migrations.

Every internal table starts with ``_ab_``; an agent's own SQL can neither read nor write
them (the authorizer in :mod:`agentbook.store.agentstore` refuses), so no handler can
forge a history row or an approval. Migrations are applied in order, each together with
its bookkeeping row in one transaction (sqlite-utils' habit); ``PRAGMA user_version``
holds how many are applied, so opening an up-to-date store costs one read.
"""

from __future__ import annotations

import re
import time
from typing import cast

import apsw

__all__ = ["INTERNAL_PREFIX", "LAZY_GROUPS", "LAZY_INDEXES", "LAZY_TABLES", "MIGRATIONS",
           "UNTRACKED_TABLES", "compact_sql", "migrate"]

INTERNAL_PREFIX = "_ab_"

#: Internal tables whose changes are *not* part of a version's changeset: they are the
#: record of versions itself. Everything else (the agent's own tables, its key-value
#: data, its schedules...) is captured, so time travel can restore it.
#: Approvals are untracked too, so that no rewind can ever bring a decided approval back.
#: Secrets (MCP credentials and the like) are untracked as well: never in a changeset, so
#: never in history or a fork. The event stream is untracked: a rewind never takes back
#: that something happened.
UNTRACKED_TABLES = frozenset(
    {"_ab_meta", "_ab_state", "_ab_history", "_ab_migrations", "_ab_approvals", "_ab_secrets",
     "_ab_events"}
) | {"_ab_outbox", "_ab_inbox_seen"}  # (messages in flight: never sent again by a rewind)

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_core",
        """
        CREATE TABLE _ab_migrations(name TEXT PRIMARY KEY, applied REAL NOT NULL) WITHOUT ROWID;
        CREATE TABLE _ab_meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
        CREATE TABLE _ab_state(
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL,
            state TEXT NOT NULL
        );
        CREATE TABLE _ab_history(
            version INTEGER PRIMARY KEY,   -- 1, 2, 3 ... per agent
            ts REAL NOT NULL,              -- when the handler started (runtime clock, epoch s)
            method TEXT NOT NULL,
            args TEXT NOT NULL,            -- JSON array of positional arguments
            kwargs TEXT,                   -- JSON object of keyword arguments, NULL if none
            source TEXT NOT NULL,          -- cell, agent:Class/name, schedule:ID, http, ...
            duration_ms REAL NOT NULL,
            outcome TEXT NOT NULL,         -- ok
            error TEXT,
            result TEXT,                   -- JSON of the return value when it is JSON
            state TEXT,                    -- JSON state after; NULL when unchanged
            changes BLOB,                  -- SQLite session changeset of this version's rows
            schema TEXT,                   -- the agent's own schema after; NULL when unchanged
            due REAL,                      -- scheduled runs: when the occurrence was due
            occurrence TEXT,               -- scheduled runs: the stable occurrence id
            effects TEXT                   -- JSON journal of recorded effects, for replay
        );
        CREATE TABLE _ab_kv(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        """,
    ),
    (
        "0002_schedules",
        """
        CREATE TABLE _ab_schedules(
            seq INTEGER PRIMARY KEY,       -- creation order (FIFO for queues)
            id TEXT NOT NULL UNIQUE,
            callback TEXT NOT NULL,
            payload TEXT NOT NULL,         -- JSON
            type TEXT NOT NULL,            -- delayed | scheduled | cron | interval | queue
            due REAL NOT NULL,             -- next due time (epoch s)
            cron TEXT,
            interval REAL,
            tz TEXT,
            attempt INTEGER NOT NULL DEFAULT 0,     -- failed attempts of this occurrence
            occurrence INTEGER NOT NULL DEFAULT 0,  -- occurrences completed so far
            missed TEXT NOT NULL DEFAULT 'once',
            retry TEXT,                    -- JSON [max_attempts, base, max_delay, jitter]
            last_error TEXT,
            created REAL NOT NULL
        );
        CREATE INDEX _ab_schedules_due ON _ab_schedules(due, seq);
        CREATE TABLE _ab_dead_letters(
            id TEXT PRIMARY KEY,
            schedule_id TEXT NOT NULL,
            occurrence TEXT NOT NULL,
            callback TEXT NOT NULL,
            payload TEXT NOT NULL,
            type TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            error TEXT,
            failed_at REAL NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    (
        "0003_approvals",
        """
        CREATE TABLE _ab_approvals(
            id TEXT PRIMARY KEY,
            method TEXT NOT NULL,
            args TEXT NOT NULL,            -- JSON array of positional arguments
            kwargs TEXT NOT NULL,          -- JSON object of keyword arguments
            nonce TEXT NOT NULL,
            digest TEXT NOT NULL,          -- sha256 over agent, method, arguments, nonce, expiry
            summary TEXT NOT NULL,
            side_effects TEXT NOT NULL,    -- JSON array of strings
            approvers TEXT,                -- JSON array, NULL = anyone
            created REAL NOT NULL,
            expires REAL,                  -- NULL = never
            status TEXT NOT NULL,          -- pending | approved | failed | rejected | expired | cancelled
            decided_by TEXT,
            decided_at REAL,
            reason TEXT,
            result TEXT,
            error TEXT,
            expiry_schedule TEXT,
            requested_at_version INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    (
        "0004_chat",
        """
        CREATE TABLE _ab_messages(
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL,
            role TEXT NOT NULL,            -- system | user | assistant | tool | summary
            content TEXT NOT NULL,
            tool_calls TEXT,               -- JSON, assistant messages that call tools
            tool_call_id TEXT,
            name TEXT,
            ts REAL NOT NULL
        );
        CREATE TABLE _ab_tool_calls(
            id TEXT PRIMARY KEY,
            tool TEXT NOT NULL,
            args TEXT NOT NULL,
            result TEXT,
            error TEXT,
            duration_ms REAL NOT NULL,
            cached INTEGER NOT NULL DEFAULT 0,
            ts REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE _ab_tool_cache(
            key TEXT PRIMARY KEY,
            result TEXT NOT NULL,
            expires REAL NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    (
        "0005_mcp",
        """
        CREATE TABLE _ab_mcp_servers(
            name TEXT PRIMARY KEY,
            transport TEXT NOT NULL,       -- stdio | http
            target TEXT NOT NULL,          -- JSON: a URL, or a command list
            secret_names TEXT NOT NULL,    -- JSON: which headers/env values are in _ab_secrets
            created REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE _ab_secrets(
            scope TEXT NOT NULL,           -- e.g. mcp:<server name>
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (scope, key)
        ) WITHOUT ROWID;
        """,
    ),
    (
        "0006_history_chain",
        """
        -- A hash chain over history: each row's hash covers the previous one, so a changed
        -- byte anywhere in a row is detected even where SQLite's own checks cannot see it.
        ALTER TABLE _ab_history ADD COLUMN chain TEXT;
        """,
    ),
    (
        "0007_retry_details",
        """
        -- A dead letter keeps its retry policy (retrying it uses the same one), and a
        -- retried occurrence keeps the time it was first due.
        ALTER TABLE _ab_dead_letters ADD COLUMN retry TEXT;
        ALTER TABLE _ab_schedules ADD COLUMN occurrence_due REAL;
        """,
    ),
    (
        "0008_schema_index",
        """
        -- "The schema as of version k" is an index look-up, however long the history.
        CREATE INDEX _ab_history_schema ON _ab_history(version) WHERE schema IS NOT NULL;
        """,
    ),
    (
        "0009_schedule_identity",
        """
        -- Schedules are idempotent: ident is a digest of callback, kind, timing and payload
        -- (NULL for queued work), key the name a user gave with key=. Both are looked up
        -- when a schedule is made, so the same one made again finds the row it already has.
        ALTER TABLE _ab_schedules ADD COLUMN ident TEXT;
        ALTER TABLE _ab_schedules ADD COLUMN key TEXT;
        CREATE INDEX _ab_schedules_ident ON _ab_schedules(ident) WHERE ident IS NOT NULL;
        CREATE INDEX _ab_schedules_key ON _ab_schedules(key) WHERE key IS NOT NULL;
        """,
    ),
    (
        "0010_events",
        """
        -- The agent's event stream on record (agentbook.store.events): written with the
        -- commit of the handler that produced it; retention prunes it by count and age.
        CREATE TABLE _ab_events(
            seq INTEGER PRIMARY KEY,       -- order of the agent's events (only grows)
            version INTEGER,               -- the version whose commit wrote it
            ts REAL NOT NULL,              -- runtime clock, epoch s
            type TEXT NOT NULL,            -- rpc, state:update, schedule:execute, ...
            payload TEXT NOT NULL          -- JSON
        );
        """,
    ),
    (
        "0011_outbox",
        """
        -- Messages a handler sent to other agents, written with its commit and deleted when
        -- the receiver's commit acknowledges them (agentbook.store.outbox).
        CREATE TABLE _ab_outbox(
            seq INTEGER PRIMARY KEY,       -- the message id: unique, growing per sender
            ts REAL NOT NULL,              -- runtime clock when it was committed
            class TEXT NOT NULL,           -- the receiver
            name TEXT NOT NULL,
            method TEXT NOT NULL,
            args TEXT NOT NULL,            -- JSON array
            kwargs TEXT,                   -- JSON object, NULL if none
            source TEXT NOT NULL           -- agent:Class/name of the sender
        );
        -- The messages from other agents this agent committed, for exactly-once delivery:
        -- sender "Class/name" and its seq; pruned below the sender's low-water mark.
        CREATE TABLE _ab_inbox_seen(
            sender TEXT NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (sender, seq)
        ) WITHOUT ROWID;
        """,
    ),
    (
        "0012_workflows",
        """
        -- Durable workflows (agentbook.workflow; rows in agentbook.store.workflows): a run
        -- of an @ab.workflow method, the journal of its steps, and events sent to it that
        -- no wait_for_event took yet.
        CREATE TABLE _ab_workflows(
            id TEXT PRIMARY KEY,
            method TEXT NOT NULL,
            args TEXT NOT NULL,            -- JSON array (the arguments after step)
            kwargs TEXT NOT NULL,          -- JSON object
            status TEXT NOT NULL,          -- running|sleeping|waiting|completed|failed|cancelled
            created REAL NOT NULL,
            updated REAL NOT NULL,
            result TEXT,                   -- JSON of the return value
            error TEXT,
            steps INTEGER NOT NULL DEFAULT 0   -- steps completed
        ) WITHOUT ROWID;
        CREATE INDEX _ab_workflows_status ON _ab_workflows(status);
        CREATE TABLE _ab_workflow_steps(
            run TEXT NOT NULL,
            seq INTEGER NOT NULL,          -- 0, 1, 2 ... in the order the code asks
            name TEXT NOT NULL,
            kind TEXT NOT NULL,            -- do | sleep | event | approval
            status TEXT NOT NULL,          -- waiting | retrying | completed | failed
            attempts INTEGER NOT NULL DEFAULT 0,
            started REAL NOT NULL,
            ended REAL,
            until REAL,                    -- a sleep's end, a wait's deadline
            ref TEXT,                      -- the approval a wait is for
            wake TEXT,                     -- the schedule that wakes the run for it
            result TEXT,                   -- JSON
            error TEXT,
            PRIMARY KEY (run, seq)
        ) WITHOUT ROWID;
        CREATE INDEX _ab_workflow_steps_ref ON _ab_workflow_steps(ref) WHERE ref IS NOT NULL;
        CREATE TABLE _ab_workflow_events(
            seq INTEGER PRIMARY KEY,
            run TEXT NOT NULL,
            name TEXT NOT NULL,
            value TEXT NOT NULL,           -- JSON
            ts REAL NOT NULL
        );
        """,
    ),
    (
        "0013_workflow_step_versions",
        """
        -- The version at which a step's record was last written (its completion, for a
        -- completed step): where run.fork(at_step=k) forks, and the timeline's anchor.
        ALTER TABLE _ab_workflow_steps ADD COLUMN version INTEGER;
        """,
    ),
    (
        "0014_tables_on_first_use",
        """
        -- From this version on, a new store has the LAZY_GROUPS' tables only once a write
        -- needs them (agentbook.store.groups); a store that has them keeps them. Nothing
        -- changes in a store migrated to it: the version tells an older agentbook that
        -- it can't read this store (an import refuses a newer store by this number).
        """,
    ),
]

#: Internal tables (and indexes) a new store does not have until a write needs them
#: (issue 20: every empty table or index takes a page, and its CREATE text a share of
#: ``sqlite_schema``'s pages; most agents never chat, register an MCP server, run a
#: workflow or make a schedule). A group is created whole, a table group with its
#: indexes, in the transaction of its first write (:mod:`agentbook.store.groups`);
#: readers take a missing table group as empty, and a missing index only makes a look-up
#: scan (``schedule_keys``: the look-ups of a schedule made again, by identity or key,
#: which the first schedule made creates). Each object has the shape the migrations
#: above give it. A later migration that changes one of them must leave a store without
#: the group alone (its objects are made in their newest shape when first needed).
LAZY_GROUPS: dict[str, tuple[str, ...]] = {
    "chat": ("_ab_messages", "_ab_tool_calls", "_ab_tool_cache"),
    "mcp": ("_ab_mcp_servers",),
    "schedule_keys": ("_ab_schedules_ident", "_ab_schedules_key"),
    "workflows": ("_ab_workflows", "_ab_workflow_steps", "_ab_workflow_events"),
}
#: The lazy groups' indexes on tables every store has.
LAZY_INDEXES = frozenset(LAZY_GROUPS["schedule_keys"])
LAZY_TABLES = frozenset(t for names in LAZY_GROUPS.values() for t in names) - LAZY_INDEXES


def _user_version(conn: apsw.Connection) -> int:
    return cast(int, conn.execute("PRAGMA user_version").fetchall()[0][0])


def migrate(conn: apsw.Connection) -> None:
    """Apply the migrations *conn*'s store has not had yet, in order, each with its
    bookkeeping row in one transaction (``PRAGMA user_version`` counts them)."""
    have = _user_version(conn)
    for index, (name, sql) in enumerate(MIGRATIONS):
        if index < have:
            continue
        with conn:
            conn.execute(sql)
            conn.execute(
                "INSERT INTO _ab_migrations(name, applied) VALUES (?, ?)", (name, time.time())
            )
            conn.execute(f"PRAGMA user_version={index + 1}")


#: A quoted string or name (kept as it is), or a run of whitespace and ``--`` comments.
_SQL_TOKEN = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\])|(?:--[^\n]*|\s)+""")


def compact_sql(sql: str) -> str:
    """*sql* with each run of whitespace and ``--`` comments made one space.

    SQLite keeps the text of every CREATE statement in ``sqlite_schema``; the migrations'
    comments are for readers of this file, and in a new store they were a third of its
    pages. Quoted strings and names are left as they are.
    """
    return _SQL_TOKEN.sub(lambda m: m.group(1) or " ", sql).strip()
