"""PostgreSQL: the pool and migrations, and what the worker's activities and
the HTTP service read and write there."""
