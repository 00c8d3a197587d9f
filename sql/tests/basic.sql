-- Inserts, updates and deletes with a primary key; transaction markers.
-- options: include-transaction=on actions=insert,update,delete,truncate,message
CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, age int, active boolean DEFAULT true);
INSERT INTO users VALUES (1, 'ann', 31, true), (2, 'bob', NULL, false);
BEGIN;
INSERT INTO users VALUES (3, 'cid', 42);
UPDATE users SET age = age + 1 WHERE id = 1;
DELETE FROM users WHERE id = 2;
COMMIT;
BEGIN;
INSERT INTO users VALUES (4, 'rolled back', 0);
ROLLBACK;
UPDATE users SET name = 'ann b.' WHERE id = 1;
DELETE FROM users;
