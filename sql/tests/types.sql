-- One column of each common type plus the generic path: values equal to_json(value).
-- options: actions=insert include-types=on
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN jdom AS jsonb;
CREATE TYPE pair AS (x int, label text);
CREATE TABLE t (
    id int PRIMARY KEY,
    i2 smallint, i8 bigint, f4 real, f8 double precision, n numeric(10,3), nn numeric,
    b boolean, t text, vc varchar(5), c char(4), nm name,
    j json, jb jsonb, u uuid,
    d date, ts timestamp, tstz timestamptz, tm time, tmtz timetz, iv interval,
    by bytea, ia int[], ta text[], m2 int[][], mo mood, pi posint, jd jdom, p pair,
    r int4range, tr tstzrange, ip inet, mac macaddr, mon money, o oid, bits bit varying(8), pt point
);
INSERT INTO t VALUES (
    1, -32768, 9223372036854775807, 1.5, 0.1, 12.340, -0.000001,
    true, 'text "quoted" \ back', 'abc', 'ab', 'name',
    '{"a" : [1, 2.50, "x"]}', '{"b": [1, 2.50], "a": null}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '2026-11-22', '2026-11-22 05:00:00.5', '2026-11-22 05:00:00.123456+02', '12:34:56.789', '12:34:56+05:30', '1 year 2 mons 3 days 04:05:06',
    '\x00ff10', '{1,NULL,3}', '{"a b","c,d",NULL,"e\"f"}', '{{1,2},{3,4}}', 'happy', 7, '{"k": 1}', ROW(1, 'one'),
    '[1,5)', '[2026-01-01 00:00+00,2026-02-01 00:00+00)', '192.168.0.1/24', '08:00:2b:01:02:03', 12.34, 42, B'101', '(1.5,2)'
);
INSERT INTO t (id, f4, f8, n, nn) VALUES (2, 'NaN', '-Infinity', 'NaN', 'Infinity');
INSERT INTO t (id, f8, d, ts, tstz) VALUES (3, 1e100, 'infinity', '-infinity', 'infinity');
INSERT INTO t (id, f4, f8, ia, ta) VALUES (4, 3.4028235e38, 1.234e-5, '{}', '{}');
INSERT INTO t (id) VALUES (5);
