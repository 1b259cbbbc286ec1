-- What the seed looks like: one line per table with its row count and a checksum. build.sh
-- stores the seed's fingerprint in the layer; every test computes it again on its own copy
-- and must get exactly the same. (A checksum of whole rows for the small table; of the
-- numeric columns and payload lengths for the big ones, which is ten times cheaper than
-- hashing every row's text and still changes with any insert, update or delete.)
SELECT 'accounts', count(*), coalesce(sum(hashtext(a::text)), 0) FROM accounts AS a
UNION ALL
SELECT 'orders', count(*), coalesce(sum(id * total_cents + account_id), 0) FROM orders
UNION ALL
SELECT 'events', count(*), coalesce(sum(id * account_id + length(payload)), 0) FROM events;
