-- Partitioned tables: changes are reported under the leaf partition that holds the row.
-- options: actions=insert,update,delete,truncate
CREATE TABLE measurements (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE measurements_eu PARTITION OF measurements FOR VALUES IN ('eu');
CREATE TABLE measurements_us PARTITION OF measurements FOR VALUES IN ('us');
INSERT INTO measurements VALUES (1, 'eu', 10), (2, 'us', 20);
UPDATE measurements SET v = 11 WHERE id = 1;
UPDATE measurements SET region = 'us' WHERE id = 1;
DELETE FROM measurements WHERE id = 2;
TRUNCATE measurements;
