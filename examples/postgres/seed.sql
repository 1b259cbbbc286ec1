-- The seed of the PostgreSQL demo and benchmark: three related tables generated with
-- generate_series, deterministic (no random()), about 25 MB at scale 1 and growing linearly
-- (scale 46 is about 1 GiB). Run as `psql -v scale=N -f seed.sql` (default scale 1).
--
-- Editing this file changes the layer's key: the next run rebuilds the seeded layer.

\set ON_ERROR_STOP on
\if :{?scale}
\else
\set scale 1
\endif

-- Each table is created and loaded in one transaction: with wal_level = minimal PostgreSQL
-- then skips the WAL for it (it writes the files directly), so seeding is fast and the WAL
-- stays small.

BEGIN;
CREATE TABLE accounts (
    id            integer PRIMARY KEY,
    name          text NOT NULL,
    email         text NOT NULL UNIQUE,
    balance_cents bigint NOT NULL,
    created_at    timestamptz NOT NULL
);
INSERT INTO accounts
SELECT i,
       'account ' || i,
       'user' || i || '@example.com',
       (i * 7919) % 1000000,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute'
FROM generate_series(1::bigint, 10000 * :scale) AS i;

COMMIT;

BEGIN;
CREATE TABLE orders (
    id          bigint PRIMARY KEY,
    account_id  integer NOT NULL REFERENCES accounts (id),
    total_cents integer NOT NULL,
    status      text NOT NULL,
    placed_at   timestamptz NOT NULL
);
INSERT INTO orders
SELECT i,
       1 + (i * 31) % (10000 * :scale),
       (i * 104729) % 50000,
       (ARRAY['new', 'paid', 'shipped', 'delivered', 'refunded'])[1 + i % 5],
       timestamptz '2024-06-01 00:00:00+00' + i * interval '1 second'
FROM generate_series(1::bigint, 100000 * :scale) AS i;
CREATE INDEX orders_account_id ON orders (account_id);

COMMIT;

BEGIN;
CREATE TABLE events (
    id         bigint NOT NULL,
    account_id integer NOT NULL,
    kind       text NOT NULL,
    payload    text NOT NULL
);
INSERT INTO events
SELECT i,
       1 + (i * 17) % (10000 * :scale),
       (ARRAY['login', 'logout', 'view', 'click', 'purchase'])[1 + i % 5],
       repeat(md5(i::text), 2)
FROM generate_series(1::bigint, 100000 * :scale) AS i;
COMMIT;

-- Set every row's hint bits and mark every page all-visible now: otherwise the first read of
-- each page in every test's server would dirty it, and write it back, copying the table's
-- files up into the test's container.
VACUUM (FREEZE, ANALYZE);
