-- add-tables / filter-tables patterns and the actions option.
-- options: add-tables=public.keep*,other.* filter-tables=public.keep_not actions=insert,update
CREATE SCHEMA other;
CREATE TABLE keep1 (id int PRIMARY KEY);
CREATE TABLE keep_not (id int PRIMARY KEY);
CREATE TABLE dropme (id int PRIMARY KEY);
CREATE TABLE other.x (id int PRIMARY KEY);
INSERT INTO keep1 VALUES (1);
INSERT INTO keep_not VALUES (1);
INSERT INTO dropme VALUES (1);
INSERT INTO other.x VALUES (1);
UPDATE keep1 SET id = 2;
DELETE FROM keep1;
TRUNCATE other.x;
