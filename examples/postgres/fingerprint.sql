-- What the seed looks like: one line per table with its row count and a checksum. The demo
-- keeps it in the table seed_fingerprint (the bench's build.sh in a file); every test computes it again on its own copy
-- and must get exactly the same. (A checksum of whole rows for the small table; of the
-- numeric columns and payload lengths for the big ones, which is ten times cheaper than
-- hashing every row's text and still changes with any insert, update or delete.)
-- (Timestamps enter as epoch seconds: their text form would depend on the session's
-- TimeZone and DateStyle.)
SELECT 'accounts', count(*),
       coalesce(sum(hashtext(concat_ws('|', id, name, email, balance_cents,
                                       extract(epoch FROM created_at)))), 0)
FROM accounts
UNION ALL
SELECT 'orders', count(*), coalesce(sum(id * total_cents + account_id), 0) FROM orders
UNION ALL
SELECT 'events', count(*), coalesce(sum(id * account_id + length(payload)), 0) FROM events;
