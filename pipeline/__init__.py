"""The Action Unit training DAG and the ways to run it (locally, on a cluster, on a schedule)."""
