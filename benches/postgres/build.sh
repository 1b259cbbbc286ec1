#!/bin/sh
# Builds the seeded PostgreSQL data directory. pristine runs this once, as the postgres
# user, in a throwaway container over the host's root filesystem (an earlier step of the
# same layer created the data directory as root); everything it writes outside /tmp
# becomes the layer that every test's container starts from (copy-on-write).
#
#   sh build.sh SCALE [demo]   (SCALE 1: a 30 MB database, 25 MB of it tables; 46: about 1 GiB)
#   sh build.sh SCALE pgbench  (pgbench -i -s SCALE: 2 is a 30 MB database, 70 about 1 GiB)
#
# The seed (seed.sql), the configuration (postgresql.conf) and this script are copied into
# the layer first, so editing any of them changes the layer's key and triggers a rebuild.
set -eu
SCALE=$1
KIND=${2:-demo}
BIN=/usr/lib/postgresql/15/bin
DATA=/srv/pristine-pg
ASSETS=/opt/pristine-pg

# This step runs as the postgres user (PostgreSQL refuses to run as root).
as_pg() { "$@"; }
fail() { echo "build.sh: $1; server log:" >&2; cat /tmp/pg.log >&2 2>/dev/null; exit 1; }

# 1 MB WAL segments: the first write in a test copies the current segment up whole.
as_pg "$BIN/initdb" -D "$DATA" --wal-segsize=1 --auth=trust --username=postgres \
    --encoding=UTF8 --locale=C --no-sync --no-instructions >/tmp/initdb.log 2>&1 \
    || { cat /tmp/initdb.log >&2; exit 1; }
cat "$ASSETS/postgresql.conf" >>"$DATA/postgresql.conf"

as_pg "$BIN/pg_ctl" -D "$DATA" -l /tmp/pg.log -w -t 120 start >/dev/null || fail "start failed"
psql() { as_pg "$BIN/psql" -h /tmp -U postgres -X -q -v ON_ERROR_STOP=1 "$@" postgres; }
if [ "$KIND" = pgbench ]; then
    as_pg "$BIN/pgbench" -h /tmp -U postgres -i -q -s "$SCALE" postgres >/tmp/pgbench.log 2>&1 \
        || { cat /tmp/pgbench.log >&2; fail "pgbench -i failed"; }
    psql -A -t -c "SELECT count(*) FROM pgbench_accounts" >"$ASSETS/fingerprint.txt"
else
    psql -v scale="$SCALE" -f "$ASSETS/seed.sql" || fail "seeding failed"
    # What every test must see: row counts and checksums of the seed, kept in the layer.
    psql -A -t -F ' ' -f "$ASSETS/fingerprint.sql" >"$ASSETS/fingerprint.txt" || fail "fingerprint failed"
fi
psql -A -t -c "SELECT pg_size_pretty(pg_database_size('postgres'))" >"$ASSETS/size.txt"
# Write everything to the data files now, so the stopped server has nothing left to do and
# a test's server starts without recovery.
psql -c CHECKPOINT || fail "checkpoint failed"
as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || fail "stop failed"
