-- Runs after 002 (name order, not number of characters): renames what 002 inserted.
UPDATE users SET name = upper(name);
ALTER TABLE users ADD COLUMN migrated boolean NOT NULL DEFAULT true;
