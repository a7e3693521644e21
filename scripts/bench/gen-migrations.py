#!/usr/bin/env python3
"""Writes N migrations valid on both PostgreSQL and SQLite: DIR [N=1000].

Groups of five: create a table, add a column, add an index, seed rows, create a view."""
import os
import sys

out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000
os.makedirs(out, exist_ok=True)
for v in range(1, n + 1):
    k, step = (v - 1) // 5, (v - 1) % 5
    sql, name = [
        (f"CREATE TABLE t{k} (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n", f"create_t{k}"),
        (f"ALTER TABLE t{k} ADD COLUMN extra TEXT;\n", f"add_extra_t{k}"),
        (f"CREATE INDEX i{k} ON t{k} (name);\n", f"index_t{k}"),
        (f"INSERT INTO t{k} (id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c');\n", f"seed_t{k}"),
        (f"CREATE VIEW v{k} AS SELECT id, name FROM t{k};\n", f"view_t{k}"),
    ][step]
    with open(os.path.join(out, f"{v:05d}_{name}.sql"), "w") as f:
        f.write(sql)
