"""Every side effect: PostgreSQL, message providers and templates."""
