#!/bin/sh
# Temporal's two databases on the stack's PostgreSQL, created on the first run
# and brought to the schema of this admin-tools version on every run (what the
# deprecated auto-setup image did). Safe to repeat: an existing database is
# kept, and update-schema applies only the versions not applied yet.
set -eu
: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}" "${SQL_PASSWORD:?}"
schema=/etc/temporal/schema/postgresql/v12

sql() {  # database, then the tool's command
  database=$1
  shift
  temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "${DB_PORT:-5432}" -u "$POSTGRES_USER" --db "$database" "$@"
}

for database in temporal temporal_visibility; do
  versions=$schema/temporal/versioned
  [ "$database" = temporal_visibility ] && versions=$schema/visibility/versioned
  sql "$database" create
  sql "$database" setup-schema -v 0.0
  sql "$database" update-schema -d "$versions"
done
echo "Temporal schema ready"
