-- DDL capture: each statement becomes a DDL object at its place in the stream.
-- options: include-transaction=on
CREATE TABLE items (id int PRIMARY KEY, name text);
INSERT INTO items VALUES (1, 'a');
ALTER TABLE items ADD COLUMN price numeric DEFAULT 0;
INSERT INTO items VALUES (2, 'b', 9.99);
ALTER TABLE items DROP COLUMN name;
INSERT INTO items VALUES (3, 1.5);
CREATE INDEX items_price ON items (price);
BEGIN;
ALTER TABLE items RENAME TO goods;
INSERT INTO goods VALUES (4, 2);
COMMIT;
DROP TABLE goods;
CREATE VIEW v AS SELECT 1 AS one;
DROP VIEW v;
